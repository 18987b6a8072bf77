"""AlexNet in JAX/Flax: the 2012 network, its recipe and its two-column model parallelism."""
