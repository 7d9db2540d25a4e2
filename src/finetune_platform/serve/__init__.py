"""`finetune serve`'s face: the inference server's HTTP app over the domain's adapter pool and batcher."""
