"""The bottom floor: memory plan, dense linear algebra, stochastic Lanczos
quadrature and the output-space curvature contraction. Imports nothing from the
package but ``_compat``; every other folder may import it."""
