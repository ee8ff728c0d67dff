"""Backend services of the healthcare connections platform."""
