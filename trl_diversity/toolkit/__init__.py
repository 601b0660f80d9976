"""The quality-diversity toolkit: sample with or without CFG, evaluate with CIs, merge finetunes, sweep, dial."""
