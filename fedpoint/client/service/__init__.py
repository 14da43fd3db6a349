"""The site annotation service: a web page for clinicians and a MONAI Label-compatible API.

    from fedpoint.client.service import create_app, load_service_config
    app = create_app(load_service_config("site.toml"))

See docs/site-service.md.
"""

from fedpoint.client.service.app import create_app, serve
from fedpoint.client.service.site_config import ServiceConfigError, SiteServiceConfig, load_service_config, make_service_config
from fedpoint.client.service.state import ServiceState

__all__ = [
    "ServiceConfigError",
    "ServiceState",
    "SiteServiceConfig",
    "create_app",
    "load_service_config",
    "make_service_config",
    "serve",
]
