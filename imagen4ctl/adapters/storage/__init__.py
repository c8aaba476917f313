"""Where images live: an S3 bucket (MinIO, SeaweedFS, AWS) or a local folder, behind one interface.

`base` holds the interface and the key rules, `s3` and `local` the two backends. Importing
this package does not import `minio`; the S3 backend does so when it is first used.
"""

from imagen4ctl.adapters.storage.base import (
    MAX_URL_LIFETIME,
    PROBE_FOLDER,
    ObjectInfo,
    Storage,
    check_key,
)
from imagen4ctl.adapters.storage.local import LocalStorage
from imagen4ctl.adapters.storage.s3 import PART_SIZE, S3Storage, s3_from_settings

__all__ = [
    "MAX_URL_LIFETIME",
    "PART_SIZE",
    "PROBE_FOLDER",
    "LocalStorage",
    "ObjectInfo",
    "S3Storage",
    "Storage",
    "check_key",
    "s3_from_settings",
]
