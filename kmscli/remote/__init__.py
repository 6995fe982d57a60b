"""Remote mode: the same KMS interface as the vault's service, answered by another KMS through botocore.

``--endpoint URL`` (or ``KMSCLI_ENDPOINT``; ``aws`` for AWS KMS itself) makes
``cli.common.service()`` return a :class:`~kmscli.remote.client.RemoteKms`
instead of the vault's :class:`~kmscli.service.Kms`. Both take AWS request
members as keyword arguments and return AWS response shapes; the commands do
not know which one they hold. Nothing here is imported unless an endpoint is
given, so botocore never slows down the local CLI (docs/remote.md).
"""
