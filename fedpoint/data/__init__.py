"""Real data for fedpoint: built-in labelled images (MR, CT, microscopy), the user's own datasets
(MSD, nnU-Net v2, image/label pairs), normalisation, model-sized samples, and simulated sites.

Arrays keep the index order of their files: 3D (x, y, z), 2D (x, y); images are (C, *spatial).
Importing this package is cheap: MONAI and torch are imported only by the functions that use them.
"""

from fedpoint.data.builtin import BUILTIN_DATASETS, default_data_dir, list_datasets, prepare
from fedpoint.data.contact_sheet import contact_sheet
from fedpoint.data.load import load_dataset
from fedpoint.data.normalize import CT_WINDOWS, normalize
from fedpoint.data.samples import CropInfo, Sample, full_slice_samples, make_samples, uncrop
from fedpoint.data.shifts import SHIFTS, apply_shift
from fedpoint.data.sites import (Site, SiteSpec, build_site, build_sites, load_site_specs, load_site_stream,
                                 save_site_stream)
from fedpoint.data.types import Case, DataError, Dataset, DatasetInfo, LabelledObject

__all__ = [
    "BUILTIN_DATASETS",
    "CT_WINDOWS",
    "Case",
    "CropInfo",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "LabelledObject",
    "SHIFTS",
    "Sample",
    "Site",
    "SiteSpec",
    "apply_shift",
    "build_site",
    "build_sites",
    "contact_sheet",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "load_site_specs",
    "load_site_stream",
    "full_slice_samples",
    "make_samples",
    "normalize",
    "prepare",
    "save_site_stream",
    "uncrop",
]
