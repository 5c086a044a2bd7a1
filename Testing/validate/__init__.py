"""``make validate``: tests on data that may not be redistributed (a package, so that its conftest
and test modules do not shadow those of Testing/)."""
