"""fedpoint: federated, continual adaptation of interactive medical image segmentation.

Clinicians' clicks drive small adapter updates at each site; a coordinator federates only those
adapter deltas into banks (site-general and per modality). Images never leave a site.
"""

__version__ = "0.1.0"
