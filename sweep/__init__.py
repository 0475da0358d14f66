"""freeze-sweep: compare ways of freezing layers while fine-tuning a pretrained network."""
