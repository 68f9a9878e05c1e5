"""alexnet: train AlexNet variants on CIFAR-10 from composed Hydra configs, every run logged to W&B."""
