"""The vault file: its format and its store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: How the vault reaches a KMS, for a vault whose root key one holds (vault/rootkey.py): ``kms_connect(region)``
#: returns an object with the KMS interface (GenerateDataKey, Decrypt). The vault talks to no network itself: the
#: adapter that runs (cli.common, for every command, the agent's and serve's included) plugs in botocore's
#: client. It lives here, in the package every vault module loads anyway, so plugging it in costs a call nothing.
kms_connect: Callable[[str], Any] | None = None
