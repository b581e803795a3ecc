"""The baselines the method is judged against: RFT (rejection-sampling fine-tuning) and GRPO (TRL's trainer with our
verifier as the reward). `sft` and `sft-matched` are stages of the main pipeline; the "w/o y'" ablation (`no-hint`)
is the variational pipeline with `sample.proposal: prior`."""
