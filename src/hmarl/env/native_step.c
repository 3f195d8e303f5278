/* Fused CPU step of hmarl's market simulator (see native.py). Same rules, state layout and order of
 * operations as vec_env.MarketEnv.step + _observe; one pass over envs and symbols, no allocation.
 * Prebuilt at install or compiled on first use (hmarl/cbuild.py); parity-tested against
 * tests/env_reference.py. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NA 7
#define NMC 4 /* master reward components, hmarl/env/params.py MASTER_COMPONENTS order */
#define TINY 1e-12
#define SHARPE_EPS 1e-8

typedef struct {
    /* sizes */
    int64_t n, s, t_bars, window, episode_length, max_consec, bar_hi, master_interval, step_count, capacity;
    int64_t acc_k, col_policy, col_executed, col_comp, col_sums, col_master, col_financing, row_len;
    /* parameters */
    double fee, slip_base, slip_vol, slip_impact, slip_max, add_frac, min_order, winner_thr;
    double buy_frac[3], sell_partial, lev_room, fin_per_bar, bankrupt_level, max_dd, alpha, sharpe_clip;
    double roi_scale, roi_lo, roi_hi, dd_thr, dd_pen, util_scale, div_scale, initial_cash;
    double weights[10], master_weights[NMC], tiers[8];
    double risk_aversion; /* of the master's utility component: r - risk_aversion / 2 x r^2 */
    int64_t default_directive;
    /* market and tables */
    const double *table;      /* (5, T, S) open, close, tradable, sigma, adv */
    const double *bench;      /* (T,) */
    const double *cash_rate;  /* (T,) per-bar rate earned by positive cash */
    const double *directives; /* (G, 3) risk, cap, limit */
    const int64_t *actions;   /* (N, S) */
    const uint8_t *mask_in;   /* (N, S, 7) masks of the current observation */
    const int64_t *starts;    /* (N,) */
    /* state (in/out) */
    double *agent;            /* (7, N, S) shares, entry, peak, hold, ema_m, ema_v, run */
    int64_t *agent_int;       /* (2, N, S) last, seen */
    int64_t *ring;            /* (W, N, S) */
    int64_t *packed;          /* (N, S) */
    double *account;          /* (6, N) cash, equity, peak_eq, max_dd, port_m, port_v */
    int64_t *clock;           /* (4, N) t, k, start, directive */
    uint8_t *done;            /* (N,) */
    double *acc;              /* (K, N) */
    double *rows;             /* (capacity + 1, row_len) */
    int64_t *count;           /* () */
    /* step outputs */
    double *reward, *components, *master_reward, *master_components, *cost, *financing, *buy_scale;
    uint8_t *terminated, *truncated, *forced, *invalid, *reset;
    int64_t *executed;
    /* observation outputs */
    uint8_t *mask, *counts, *master_due;
    float *agent_obs, *portfolio, *directive_features;
    int64_t *bar, *directive;
    /* env.initial_position: allocation (initial.py) and reward.pnl_baseline: hold */
    int64_t initial_alloc, pnl_hold;
    double initial_frac;
    double *entry_cost;       /* (N, S) cost of each env's latest initial purchase */
    /* env.master.rebalance (env/rebalance.py): 0 none, 1 trim, 2 target */
    int64_t rebalance;
    double rebalance_band;
    double *rebalanced;       /* (N, S) out: signed notional the master's rebalance traded */
    /* env.master.cap_unit: vol_target (env/vol_prior.py): a cap at bar t is min(cap x cap_scale[t], cap_ceiling) */
    const double *cap_scale;  /* (T,) 1 for the other units */
    double cap_ceiling;       /* +inf for the other units */
} HmStep;

/* The struct's layout, compared field by field with its ctypes mirror (hmarl/env/native.py HmStep) at load
   (hmarl/cbuild.py check_layout): list every field here. */
typedef struct { const char *name; int64_t offset, size; } HmField;
#define F(f) {#f, (int64_t)offsetof(HmStep, f), (int64_t)sizeof(((HmStep *)0)->f)}
static const HmField HM_STEP_FIELDS[] = {
    F(n), F(s), F(t_bars), F(window), F(episode_length), F(max_consec), F(bar_hi), F(master_interval),
    F(step_count), F(capacity), F(acc_k), F(col_policy), F(col_executed), F(col_comp), F(col_sums),
    F(col_master), F(col_financing), F(row_len), F(fee), F(slip_base), F(slip_vol), F(slip_impact),
    F(slip_max), F(add_frac), F(min_order), F(winner_thr), F(buy_frac), F(sell_partial), F(lev_room),
    F(fin_per_bar), F(bankrupt_level), F(max_dd), F(alpha), F(sharpe_clip), F(roi_scale), F(roi_lo),
    F(roi_hi), F(dd_thr), F(dd_pen), F(util_scale), F(div_scale), F(initial_cash), F(weights),
    F(master_weights), F(tiers), F(risk_aversion), F(default_directive), F(table), F(bench), F(cash_rate), F(directives),
    F(actions), F(mask_in), F(starts), F(agent), F(agent_int), F(ring), F(packed), F(account), F(clock),
    F(done), F(acc), F(rows), F(count), F(reward), F(components), F(master_reward), F(master_components),
    F(cost), F(financing), F(buy_scale), F(terminated), F(truncated), F(forced), F(invalid), F(reset),
    F(executed), F(mask), F(counts), F(master_due), F(agent_obs), F(portfolio), F(directive_features),
    F(bar), F(directive), F(initial_alloc), F(pnl_hold), F(initial_frac), F(entry_cost), F(rebalance),
    F(rebalance_band), F(rebalanced), F(cap_scale), F(cap_ceiling)
};
#undef F
int64_t hm_step_sizeof(void) { return (int64_t)sizeof(HmStep); }
int64_t hm_step_layout(const HmField **fields) {
    *fields = HM_STEP_FIELDS;
    return (int64_t)(sizeof HM_STEP_FIELDS / sizeof HM_STEP_FIELDS[0]);
}

static inline double clampd(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }
/* inline max/min (libm's fmax/fmin are out-of-line calls; inputs here are never NaN) */
static inline double maxd(double a, double b) { return a > b ? a : b; }
static inline double mind(double a, double b) { return a < b ? a : b; }
static inline double pos(double x) { return x > 0.0 ? 1.0 : 0.0; }

static int nonzero_bytes(int64_t w) {
    int c = 0;
    for (int a = 0; a < NA; a++) c += ((w >> (8 * a)) & 0xFF) != 0;
    return c;
}

/* per-position cap (fraction of equity) of directive row d at env i's current bar (vol_prior.effective_caps) */
static double cap_at(const HmStep *p, int64_t i, const double *d) {
    return mind(d[1] * p->cap_scale[p->clock[i]], p->cap_ceiling);
}

/* decision quantities of env i at its current bar */
typedef struct { double alloc, bp, limit, open_count; int level; } Decision;

static Decision decide(const HmStep *p, int64_t i) {
    const int64_t N = p->n, S = p->s;
    const double *d = p->directives + 3 * p->clock[3 * N + i];
    const double equity = p->account[N + i];
    const double *restrict shares = p->agent + i * S;
    Decision dec;
    dec.alloc = equity * d[0] * cap_at(p, i, d);
    dec.bp = p->account[i] + p->lev_room * equity;
    dec.limit = d[2];
    double oc = 0.0;
    for (int64_t j = 0; j < S; j++) oc += shares[j] > 0.0 ? 1.0 : 0.0;
    dec.open_count = oc;
    dec.level = 0;
    for (int k = 0; k < 3; k++) dec.level += dec.bp >= dec.alloc * p->buy_frac[k] * (1.0 + p->fee);
    return dec;
}

static void observe_env(const HmStep *p, int64_t i) {
    const int64_t N = p->n, S = p->s, T = p->t_bars, t = p->clock[i], NS = N * S;
    const Decision dec = decide(p, i);
    const double fee = p->fee, add_frac = p->add_frac, min_order = p->min_order, winner = 1.0 + p->winner_thr;
    const double inv_len = 1.0 / (double)p->episode_length;
    const double equity = p->account[N + i], cash = p->account[i];
    const double inv_eq = 1.0 / maxd(equity, TINY);
    const double alloc = dec.alloc, bp = dec.bp, room_new = pos(dec.limit - dec.open_count);
    const int level = dec.level;
    const double *restrict close = p->table + 1 * T * S + t * S, *restrict trad = p->table + 2 * T * S + t * S;
    const double *restrict shares = p->agent + i * S, *restrict entry = p->agent + NS + i * S;
    const double *restrict peak = p->agent + 2 * NS + i * S, *restrict hold = p->agent + 3 * NS + i * S;
    const int64_t *restrict packed = p->packed + i * S;
    uint8_t *restrict mask = p->mask + i * S * NA, *restrict counts = p->counts + i * S * NA;
    float *restrict f = p->agent_obs + i * S * 7;
    double total = 0.0;
    for (int64_t j = 0; j < S; j++) {
        const double holding = shares[j] > 0.0 ? 1.0 : 0.0;
        const double value = shares[j] * close[j];
        total += value;
        const double can_sell = trad[j] * holding;
        const double can_open = (trad[j] - can_sell) * room_new;
        const double room = alloc - value;
        const double add_cost = mind(room, alloc * add_frac) * (1.0 + fee);
        const double can_add = can_sell * pos(close[j] - entry[j] * winner) * pos(room - alloc * min_order)
                               * (1.0 - pos(add_cost - bp));
        uint8_t *m = mask + j * NA;
        m[0] = 1;
        m[1] = can_open > 0.0 && level > 0;
        m[2] = can_open > 0.0 && level > 1;
        m[3] = can_open > 0.0 && level > 2;
        m[4] = m[5] = can_sell > 0.0;
        m[6] = can_add > 0.0;
        float *fj = f + j * 7;
        fj[0] = (float)(value * inv_eq);
        fj[1] = (float)(value / alloc);
        fj[2] = (float)((entry[j] / close[j] - 1.0) * holding);
        fj[3] = (float)((close[j] - entry[j]) * shares[j] * inv_eq);
        fj[4] = (float)(hold[j] * inv_len);
        fj[5] = (float)((1.0 - close[j] / maxd(peak[j], TINY)) * holding);
        fj[6] = (float)trad[j];
        const int64_t w = packed[j];
        for (int a = 0; a < NA; a++) counts[j * NA + a] = (uint8_t)((w >> (8 * a)) & 0xFF);
    }
    const int64_t k = p->clock[N + i];
    const double *d = p->directives + 3 * p->clock[3 * N + i];
    const uint8_t due = (k % p->master_interval) == 0;
    const double port_m = p->account[4 * N + i], port_v = p->account[5 * N + i];
    float *pf = p->portfolio + i * 7;
    pf[0] = (float)(cash / maxd(equity, TINY));
    pf[1] = (float)(total / maxd(equity, TINY));
    pf[2] = (float)(1.0 - equity / p->account[2 * N + i]);
    pf[3] = (float)clampd(port_m / (sqrt(port_v) + SHARPE_EPS), -p->sharpe_clip, p->sharpe_clip);
    pf[4] = (float)(dec.open_count / d[2]);
    pf[5] = (float)((double)k / (double)p->episode_length);
    pf[6] = (float)due;
    p->directive_features[i * 3 + 0] = (float)d[0];
    p->directive_features[i * 3 + 1] = (float)cap_at(p, i, d);
    p->directive_features[i * 3 + 2] = (float)(d[2] / (double)S);
    p->master_due[i] = due;
    p->bar[i] = t;
    p->directive[i] = p->clock[3 * N + i];
}

/* env.initial_position: allocation (env/initial.py): at its start bar's close the reset account buys each
   tradable symbol for initial_frac of its allocation, filled as any buy (slippage, commission, open limit in
   symbol order, pro rata to the cash) */
static void buy_initial(HmStep *p, int64_t i) {
    const int64_t N = p->n, S = p->s, T = p->t_bars, NS = N * S, t = p->clock[i];
    const double *d = p->directives + 3 * p->clock[3 * N + i];
    const double *restrict close = p->table + 1 * T * S + t * S, *restrict trad = p->table + 2 * T * S + t * S;
    const double *restrict sigma = p->table + 3 * T * S + t * S, *restrict adv = p->table + 4 * T * S + t * S;
    double *restrict shares = p->agent + i * S, *restrict entry = p->agent + NS + i * S;
    double *restrict peak = p->agent + 2 * NS + i * S, *restrict hold = p->agent + 3 * NS + i * S;
    double *restrict entry_cost = p->entry_cost + i * S;
    const double alloc = p->account[N + i] * d[0] * cap_at(p, i, d), fee = p->fee;
    double want[S], slip[S], need = 0.0, rank = 0.0;
    for (int64_t j = 0; j < S; j++) {
        const double buy_frac = trad[j] > 0.5 ? p->initial_frac : 0.0;
        rank += buy_frac > 0.0 ? 1.0 : 0.0;
        want[j] = buy_frac * alloc * pos(d[2] + 0.5 - rank);
        const double impact = want[j] / adv[j];
        slip[j] = mind(sigma[j] * p->slip_vol + impact * p->slip_impact + p->slip_base, p->slip_max);
        need += want[j] * ((slip[j] + 1.0) * (1.0 + fee));
    }
    const double scale = clampd(p->account[i] / maxd(need, 1e-12), 0.0, 1.0);
    double paid_total = 0.0, total = 0.0;
    for (int64_t j = 0; j < S; j++) {
        const double notional = want[j] * scale;
        const double q = notional / close[j], px = close[j] * (1.0 + slip[j]);
        const double paid = notional * ((slip[j] + 1.0) * (1.0 + fee));
        const double held = q > 0.0 ? 1.0 : 0.0;
        paid_total += paid;
        shares[j] = q;
        entry[j] = px * held;
        peak[j] = maxd(px, close[j]) * held;
        hold[j] = held;
        entry_cost[j] = paid - notional;
    }
    const double cash = maxd(p->account[i] + (0.0 - paid_total), 0.0);
    for (int64_t j = 0; j < S; j++) total += shares[j] * close[j];
    p->account[i] = cash;
    p->account[N + i] = p->account[2 * N + i] = cash + total;
}

static void reset_env(HmStep *p, int64_t i) {
    int64_t N = p->n, S = p->s, NS = N * S;
    for (int f = 0; f < 7; f++) memset(p->agent + f * NS + i * S, 0, S * sizeof(double));
    for (int f = 0; f < 2; f++) memset(p->agent_int + f * NS + i * S, 0, S * sizeof(int64_t));
    memset(p->packed + i * S, 0, S * sizeof(int64_t));
    for (int f = 0; f < 6; f++) p->account[f * N + i] = f < 3 ? p->initial_cash : 0.0;
    p->clock[i] = p->starts[i];
    p->clock[N + i] = 0;
    p->clock[2 * N + i] = p->starts[i];
    p->clock[3 * N + i] = p->default_directive;
    for (int64_t c = 0; c < p->acc_k; c++) p->acc[c * N + i] = 0.0;
    if (p->initial_alloc) buy_initial(p, i);
}

/* env.master.rebalance (env/rebalance.py): the master's override of a held symbol its agent HOLDs, at a
   bar where the master is due: a fraction of the shares to sell (above the band) or a notional to buy
   (target mode, below it); 0 where the symbol is not rebalanced */
typedef struct { double sell, buy; } Rebalance;

static Rebalance rebalance_order(const HmStep *p, double shares, double close0, double alloc) {
    Rebalance r = {0.0, 0.0};
    const double value0 = shares * close0, target = alloc * p->initial_frac, band = p->rebalance_band;
    if (value0 - target * (1.0 + band) > 0.0) r.sell = 1.0 - target / maxd(value0, TINY);
    else if (p->rebalance == 2 && target * (1.0 - band) - value0 > 0.0) r.buy = target - value0;
    return r;
}

static void step_env(HmStep *p, int64_t i) {
    const int64_t N = p->n, S = p->s, T = p->t_bars, NS = N * S, W = p->window;
    const int64_t t = p->clock[i], k = p->clock[N + i];
    const int64_t t1 = t + 1 < T ? t + 1 : T - 1;
    const double *restrict close0 = p->table + 1 * T * S + t * S;
    const double *restrict sigma0 = p->table + 3 * T * S + t * S, *restrict adv0 = p->table + 4 * T * S + t * S;
    const double *restrict open1 = p->table + 0 * T * S + t1 * S, *restrict close1 = p->table + 1 * T * S + t1 * S;
    const double *restrict trad1 = p->table + 2 * T * S + t1 * S;
    double *restrict shares = p->agent + i * S, *restrict entry = p->agent + NS + i * S;
    double *restrict peak = p->agent + 2 * NS + i * S, *restrict hold = p->agent + 3 * NS + i * S;
    double *restrict ema_m = p->agent + 4 * NS + i * S, *restrict ema_v = p->agent + 5 * NS + i * S;
    double *restrict run = p->agent + 6 * NS + i * S;
    int64_t *restrict last = p->agent_int + i * S, *restrict seen = p->agent_int + NS + i * S;
    int64_t *restrict packed = p->packed + i * S, *restrict slot = p->ring + (p->step_count % W) * NS + i * S;
    const int64_t *restrict act = p->actions + i * S;
    const uint8_t *restrict mask_in = p->mask_in + i * S * NA;
    double *restrict reward = p->reward + i * S, *restrict cost = p->cost + i * S;
    double *restrict rebalanced = p->rebalanced + i * S;
    const int rebalance_due = p->rebalance != 0 && (k % p->master_interval) == 0;
    double *restrict comp = p->components + i * S;  /* row q at comp + q * NS */
    int64_t *restrict executed = p->executed + i * S;
    uint8_t *restrict forced_out = p->forced + i * S, *restrict invalid_out = p->invalid + i * S;
    double *restrict acc = p->acc;
    const Decision dec = decide(p, i);
    const double alloc = dec.alloc, inv_alloc = 1.0 / alloc, slots = dec.limit - dec.open_count;
    const double fee = p->fee, slip_base = p->slip_base, slip_vol = p->slip_vol, slip_impact = p->slip_impact;
    const double slip_max = p->slip_max, add_frac = p->add_frac, min_order = p->min_order;
    const double sell_partial = p->sell_partial, alpha = p->alpha, sharpe_clip = p->sharpe_clip;
    const double roi_scale = p->roi_scale, roi_lo = p->roi_lo, roi_hi = p->roi_hi;
    const double dd_thr = p->dd_thr, dd_pen = p->dd_pen, util_scale = p->util_scale, div_scale = p->div_scale;
    const double max_consec = (double)p->max_consec;
    double buy_frac_of[NA] = {0.0, p->buy_frac[0], p->buy_frac[1], p->buy_frac[2], 0.0, 0.0, 0.0};
    double weights[10], tiers[8];
    for (int q = 0; q < 10; q++) weights[q] = p->weights[q];
    for (int q = 0; q < 8; q++) tiers[q] = p->tiers[q];
    double cash = p->account[i];
    const double equity0 = p->account[N + i];

    /* per-symbol scratch of this env (stays in L1) */
    double sc_want[S], sc_sell[S], sc_slip[S], sc_proceeds[S], sc_pnl[S], sc_mult[S], sc_traded[S];
    double sc_value1[S], sc_turnover[S], sc_rebal[S];

    /* pass 1: decision, orders, slippage */
    double need = 0.0, proceeds_total = 0.0, rank = 0.0;
    for (int64_t j = 0; j < S; j++) {
        int64_t a = act[j];
        if ((uint64_t)a >= NA) a = 0;  /* unchecked ids out of range: never index out of bounds, HOLD */
        const int valid = mask_in[j * NA + a] && a == act[j];
        const int64_t a1 = valid ? a : 0;
        const int forced = a1 == last[j] && run[j] >= max_consec && a1 != 0;
        int64_t action = forced ? 0 : a1;
        if (!(trad1[j] > 0.5)) action = 0;
        const double buy_frac = buy_frac_of[action];
        const double sell_frac = action == 4 ? sell_partial : (action == 5 ? 1.0 : 0.0);
        const double value0 = shares[j] * close0[j];
        const double dust = pos(alloc * min_order - value0 * (1.0 - sell_frac)) * (sell_frac > 0.0 ? 1.0 : 0.0);
        Rebalance rb = {0.0, 0.0};
        if (rebalance_due && action == 0 && trad1[j] > 0.5 && shares[j] > 0.0)
            rb = rebalance_order(p, shares[j], close0[j], alloc);
        const double q_sell = shares[j] * (maxd(sell_frac, dust) + rb.sell);
        rank += buy_frac > 0.0 ? 1.0 : 0.0;
        double want = buy_frac * alloc * pos(slots + 0.5 - rank);
        if (action == 6) want += mind(alloc * add_frac, maxd(alloc - value0, 0.0));
        want += rb.buy;
        sc_rebal[j] = rb.sell + rb.buy > 0.0 ? 1.0 : 0.0;
        const double impact = (want + q_sell * close0[j]) / adv0[j];
        const double slip = mind(sigma0[j] * slip_vol + impact * slip_impact + slip_base, slip_max);
        const double proceeds = q_sell * open1[j] * (1.0 - slip) * (1.0 - fee);
        need += want * ((slip + 1.0) * (1.0 + fee));
        proceeds_total += proceeds;
        executed[j] = action;
        forced_out[j] = (uint8_t)forced;
        invalid_out[j] = (uint8_t)!valid;
        sc_want[j] = want;
        sc_sell[j] = q_sell;
        sc_slip[j] = slip;
        sc_proceeds[j] = proceeds;
    }
    const double scale = clampd((dec.bp + proceeds_total) / maxd(need, 1e-12), 0.0, 1.0);
    p->buy_scale[i] = scale;

    /* pass 2: fills and positions */
    double paid_total = 0.0, total = 0.0, total_sq = 0.0;
    for (int64_t j = 0; j < S; j++) {
        const double want = sc_want[j], q_sell = sc_sell[j], slip = sc_slip[j], proceeds = sc_proceeds[j];
        const double notional = want * scale;
        const double q_buy = notional / open1[j];
        const double px_buy = open1[j] * (1.0 + slip);
        const double paid = notional * ((slip + 1.0) * (1.0 + fee));
        paid_total += paid;
        if (!((notional + q_sell) > 0.0)) executed[j] = 0;
        const double remaining = shares[j] - q_sell;
        const double shares1 = remaining + q_buy;
        const double holding1 = shares1 > 0.0 ? 1.0 : 0.0, still = remaining > 0.0 ? 1.0 : 0.0;
        const double entry0 = entry[j], value0 = shares[j] * close0[j];
        const double entry1 = (remaining * entry0 + q_buy * px_buy) / maxd(shares1, TINY);
        const double roi = (close0[j] / maxd(entry0, TINY) - 1.0) * (entry0 > 0.0 ? 1.0 : 0.0);
        const double value1 = shares1 * close1[j];
        peak[j] = maxd(maxd(peak[j] * still, entry1), close1[j]) * holding1;
        shares[j] = shares1;
        entry[j] = entry1;
        hold[j] = (hold[j] + 1.0) * holding1;
        total += value1;
        total_sq += value1 * value1;
        cost[j] = q_sell * open1[j] - proceeds + paid - notional;
        sc_pnl[j] = value1 - value0 - (q_buy - q_sell) * open1[j];
        sc_mult[j] = clampd(1.0 + roi_scale * roi, roi_lo, roi_hi);
        sc_traded[j] = q_buy - q_sell;
        sc_value1[j] = value1;
        sc_turnover[j] = (q_buy + q_sell) * open1[j];
        rebalanced[j] = (q_buy - q_sell) * open1[j] * sc_rebal[j];
    }
    cash += proceeds_total - paid_total;
    const double fin = maxd(-cash, 0.0) * p->fin_per_bar - maxd(cash, 0.0) * p->cash_rate[t];
    cash -= fin;
    const double equity1 = cash + total;
    const double peak_eq = maxd(p->account[2 * N + i], equity1);
    const double drawdown = 1.0 - equity1 / peak_eq;
    p->account[i] = cash;
    p->account[N + i] = equity1;
    p->account[2 * N + i] = peak_eq;
    p->account[3 * N + i] = maxd(p->account[3 * N + i], drawdown);
    p->financing[i] = fin;
    const double div = total > 0.0 ? 1.0 - total_sq / maxd(total * total, TINY) : 0.0;

    /* pass 3: rewards, anti-collapse, telemetry sums */
    double comp_sum[10] = {0}, rew_sum = 0.0, cost_sum = 0.0, turn_sum = 0.0, inv_sum = 0.0, new_sum = 0.0;
    double hist_p[NA] = {0}, hist_e[NA] = {0};
    const int64_t evict = k >= W;
    for (int64_t j = 0; j < S; j++) {
        const int64_t ex = executed[j];
        const double pnl = sc_pnl[j], mult = sc_mult[j], traded = sc_traded[j];
        const double value1 = sc_value1[j], turnover = sc_turnover[j];
        const double holding1 = shares[j] > 0.0 ? 1.0 : 0.0;
        const double r = pnl * inv_alloc;
        const double delta = r - ema_m[j];
        ema_m[j] += alpha * delta;
        ema_v[j] = (ema_v[j] + alpha * (delta * delta)) * (1.0 - alpha);
        const double sharpe = clampd(ema_m[j] / (sqrt(ema_v[j]) + SHARPE_EPS), -sharpe_clip, sharpe_clip);
        const double trade_dd = (1.0 - close1[j] / maxd(peak[j], TINY)) * holding1;
        const int64_t entering = (int64_t)1 << (8 * ex);
        const int64_t w = packed[j] + entering - (evict ? slot[j] : 0);
        packed[j] = w;
        slot[j] = entering;
        const int unique = nonzero_bytes(w);
        new_sum += (seen[j] & entering) == 0 ? 1.0 : 0.0;
        seen[j] |= entering;
        const double weight = value1 * inv_alloc;
        double c[10];
        c[0] = r * mult;
        if (p->pnl_hold) c[0] -= close1[j] / close0[j] - 1.0;
        c[1] = -(cost[j] * inv_alloc);
        c[2] = traded * (close1[j] - open1[j]) * inv_alloc;
        c[3] = sharpe * holding1;
        c[4] = -(weight * trade_dd) - pos(trade_dd - dd_thr) * dd_pen;
        c[5] = mind(weight, 1.0) * util_scale;
        c[6] = div * div_scale;
        c[7] = tiers[unique];
        c[8] = -(double)forced_out[j];
        c[9] = ex != 0 ? 1.0 : 0.0;
        double rw = 0.0;
        for (int q = 0; q < 10; q++) {
            comp[q * NS + j] = c[q];
            rw += weights[q] * c[q];
            comp_sum[q] += c[q];
        }
        reward[j] = rw;
        rew_sum += rw;
        cost_sum += cost[j];
        turn_sum += turnover;
        inv_sum += invalid_out[j];
        run[j] = run[j] * (ex == last[j] ? 1.0 : 0.0) + 1.0;
        last[j] = ex;
        hist_p[(uint64_t)act[j] < NA ? act[j] : 0] += 1.0;
        hist_e[ex] += 1.0;
    }
    const double port_ret = equity1 / equity0 - 1.0;
    const double excess = port_ret - (p->bench[t1] / p->bench[t] - 1.0);
    const double dm = port_ret - p->account[4 * N + i];
    p->account[4 * N + i] += alpha * dm;
    p->account[5 * N + i] = (p->account[5 * N + i] + alpha * (dm * dm)) * (1.0 - alpha);
    const double ps = clampd(p->account[4 * N + i] / (sqrt(p->account[5 * N + i]) + SHARPE_EPS), -sharpe_clip,
                             sharpe_clip);
    const double mc[NMC] = {ps, div * div_scale, excess, port_ret - 0.5 * p->risk_aversion * port_ret * port_ret};
    double mr = 0.0;
    for (int q = 0; q < NMC; q++) {
        p->master_components[q * N + i] = mc[q];
        mr += p->master_weights[q] * mc[q];
    }
    p->master_reward[i] = mr;

    /* termination */
    p->clock[i] = t1;
    p->clock[N + i] = k + 1;
    const int term = equity1 <= p->bankrupt_level || drawdown >= p->max_dd;
    const int trunc = !term && ((k + 1) >= p->episode_length || t1 >= p->bar_hi - 1);
    p->terminated[i] = (uint8_t)term;
    p->truncated[i] = (uint8_t)trunc;

    /* telemetry */
    acc[0 * N + i] += 1.0;
    for (int a = 0; a < NA; a++) {
        acc[(p->col_policy + a) * N + i] += hist_p[a];
        acc[(p->col_executed + a) * N + i] += hist_e[a];
    }
    for (int q = 0; q < 10; q++) acc[(p->col_comp + q) * N + i] += comp_sum[q];
    const double sums[5] = {rew_sum, cost_sum, turn_sum, inv_sum, new_sum};
    for (int q = 0; q < 5; q++) acc[(p->col_sums + q) * N + i] += sums[q];
    acc[p->col_master * N + i] += mr;
    acc[p->col_financing * N + i] += fin;
    if (term || trunc) {
        const int64_t row = *p->count < p->capacity ? *p->count : p->capacity;
        double *out = p->rows + row * p->row_len;
        for (int64_t c = 0; c < p->acc_k; c++) out[c] = acc[c * N + i];
        out[p->acc_k + 0] = equity1 / p->initial_cash - 1.0;
        out[p->acc_k + 1] = p->account[3 * N + i];
        out[p->acc_k + 2] = p->bench[t1] / p->bench[p->clock[2 * N + i]] - 1.0;
        out[p->acc_k + 3] = (double)term;
        *p->count += 1;
    }
}

void hm_step(HmStep *p) {
    int64_t N = p->n, S = p->s, NS = N * S;
    for (int64_t i = 0; i < N; i++) {
        p->reset[i] = p->done[i];
        if (p->done[i]) {  /* next-step autoreset: the actions are ignored */
            reset_env(p, i);
            for (int64_t j = 0; j < S; j++) {
                int64_t ij = i * S + j;
                p->reward[ij] = 0.0;
                p->executed[ij] = 0;
                p->forced[ij] = 0;
                p->invalid[ij] = 0;
                p->cost[ij] = 0.0;
                p->rebalanced[ij] = 0.0;
                for (int q = 0; q < 10; q++) p->components[q * NS + ij] = 0.0;
            }
            p->master_reward[i] = 0.0;
            for (int q = 0; q < NMC; q++) p->master_components[q * N + i] = 0.0;
            p->terminated[i] = p->truncated[i] = 0;
            p->financing[i] = 0.0;
            p->buy_scale[i] = 1.0;
            p->done[i] = 0;
        } else {
            step_env(p, i);
            p->done[i] = p->terminated[i] | p->truncated[i];
        }
        observe_env(p, i);
    }
}
