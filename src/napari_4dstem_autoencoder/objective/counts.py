"""From the network's input back to detected electrons: what a count-based loss term needs.

The network sees preprocessed patterns (detector binning by the mean, log or square-root
scaling, then ``(v - lo) / (hi - lo)`` clipped to [0, 1]; ``data.preprocess``). Every step but
the clip at the top 0.01 % of intensities can be undone, so a batch ``x`` and a reconstruction
``x_hat`` map to electrons per binned pixel (the mean of ``bin²`` pixels times ``bin²``) without
carrying raw counts through the data pipeline.

Whether the data *are* counts is checked on the data, not assumed: a counting detector (or a
Poisson-resampled simulation) gives integers after the inversion, a noise-free simulation or a
gain-normalised frame does not, and a count likelihood would then weigh pixels wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: fraction of pixels that must invert to an integer for the data to count as electron counts
INTEGER_FRACTION = 0.99


@dataclass(frozen=True)
class CountScale:
    """The inverse of a fitted preprocessing's intensity steps."""

    scaling: str  # "log", "sqrt" or "none"
    lo: float
    hi: float
    normalised: bool
    pixels_per_bin: int  # detector_bin², the pixels summed into one binned value

    @classmethod
    def from_preprocessor(cls, preprocessor) -> "CountScale":
        cfg, stats = preprocessor.config, preprocessor.stats
        if stats is None:
            raise RuntimeError("the preprocessor is not fitted; fit it before binding it")
        return cls(cfg.scaling, float(stats.lo), float(stats.hi), bool(cfg.normalise),
                   int(cfg.detector_bin) ** 2)

    @property
    def intensity_range(self) -> float:
        """Width of the scaled intensities mapped onto the input's [0, 1] (1 when unnormalised)."""
        return self.hi - self.lo if self.normalised else 1.0

    def to_counts(self, x: torch.Tensor) -> torch.Tensor:
        """Network-space values (any shape) -> electrons per binned pixel (float32, >= 0)."""
        v = x.float()
        if self.normalised:
            v = v * (self.hi - self.lo) + self.lo
        if self.scaling == "log":
            v = torch.expm1(v)
        elif self.scaling == "sqrt":
            v = v.clamp_min(0.0).square()
        return v.clamp_min(0.0) * self.pixels_per_bin

    def from_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Electrons per binned pixel -> network input: :meth:`to_counts` undone, clipped to
        [0, 1] as the preprocessing clips."""
        v = counts.float().clamp_min(0.0) / self.pixels_per_bin
        if self.scaling == "log":
            v = torch.log1p(v)
        elif self.scaling == "sqrt":
            v = v.sqrt()
        if self.normalised:
            v = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
        return v

    def thinned_halves(self, x: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The electrons of network-space patterns ``x`` split one by one, each to either half
        with probability 1/2: two patterns of the same specimen with independent shot noise
        (per binned pixel, adding up to the whole)."""
        counts = self.to_counts(x).round()
        first = torch.binomial(counts, torch.full_like(counts, 0.5), generator=generator)
        return first, counts - first

    def half_input(self, half: torch.Tensor) -> torch.Tensor:
        """A thinned half as network input, at twice its counts (so its intensities look like a
        whole pattern's)."""
        return self.from_counts(2.0 * half)


def are_counts(counts: torch.Tensor) -> bool:
    """Whether nearly every value is a non-negative integer (up to float32 rounding of the
    inversion, which grows with the count)."""
    c = counts.detach().float().reshape(-1)
    if c.numel() == 0:
        return False
    tolerance = 0.02 + 1e-5 * c.abs()
    whole = (c - c.round()).abs() <= tolerance
    return bool(whole.float().mean() >= INTEGER_FRACTION) and bool(c.max() > 0)
