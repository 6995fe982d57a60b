"""Tests that hold kmscli's AWS shapes against botocore itself (skipped when botocore is not installed)."""
