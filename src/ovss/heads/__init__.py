"""The dense head: CLIP's last block re-done with an attention rule and block surgery
(`dense`, `attention`), and every head plug-in (`plugin.HeadPlugin`), one module each.

Importing this package registers the plug-ins in `ovss.core.registry.PLUGINS`.
"""

from . import (  # noqa: F401  (registration)
    cass,
    clipdiy,
    cls_prior,
    feedback,
    freeda,
    lposs,
    mlmp,
    presence,
    proxy,
    rcs,
    selfcal,
)
from .plugin import HeadPlugin

__all__ = ["HeadPlugin"]
