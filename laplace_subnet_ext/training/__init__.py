"""Training with a subnetwork posterior: :func:`marglik_training` learns the
weights and the prior (and noise) together from the subnetwork's evidence."""

from laplace_subnet_ext.training.marglik import marglik_training

__all__ = ["marglik_training"]
