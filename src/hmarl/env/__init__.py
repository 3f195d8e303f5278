"""The batched market simulator (vec_env.MarketEnv), its reward shaper, masks, anti-collapse mechanics,
telemetry, gathers and Gymnasium front ends. Kept import-free: hmarl.config imports env.params only."""
