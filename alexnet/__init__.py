"""AlexNet variants on CIFAR-10, configured by Hydra and logged to W&B. `alexnet.train([...])` trains a run."""


def train(overrides=(), run_dir=None) -> dict:
    """Train one run in this process, as `python -m alexnet.run OVERRIDES` would; returns its summary.
    See alexnet/api.py."""
    from alexnet.api import train as train_run

    return train_run(overrides, run_dir)
