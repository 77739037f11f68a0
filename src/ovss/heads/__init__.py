"""The dense head: CLIP's last block re-done with an attention rule and block surgery
(`dense`, `attention`), and every head plug-in (`plugin.HeadPlugin`), one module each.

Importing this package registers the plug-ins in `ovss.core.registry.PLUGINS`.
"""

from . import cass, cls_prior, feedback, lposs, mlmp, presence, proxy, rcs, selfcal  # noqa: F401  (registration)
from .plugin import HeadPlugin

__all__ = ["HeadPlugin"]
