"""Pipeline wiring generated from the step contracts (``hmarl.steps.<name>``: INPUTS, OUTPUTS, PARAMS)."""
