"""fedpoint: federated, continual adaptation of interactive medical image segmentation.

Clinicians' clicks drive small adapter updates at each site; a coordinator federates only those
adapter deltas into banks (site-general and per modality). Images never leave a site.

Research software, not a medical device.
"""


def __getattr__(name: str):
    # `fedpoint.__version__`: the one version source is pyproject.toml's [project].version, read
    # from the installed metadata on first use (importlib.metadata costs tens of ms: not at import).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("fedpoint")
        except PackageNotFoundError:  # a source tree that was never installed
            value = "0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module 'fedpoint' has no attribute {name!r}")
