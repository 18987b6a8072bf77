"""AlexNet in JAX/Flax: the 2012 network, its recipe and its two-column model parallelism.

Importing the package, or any module of it, changes nothing in the process. The settings
measured to speed up training on the CPU are one explicit call, `cpu_settings.apply()`,
made by the command-line tools, the benchmarks and the tests.
"""
