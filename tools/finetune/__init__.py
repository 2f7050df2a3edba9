"""Fine-tuning: LoRA training of a base model in a child process."""
