"""Validation of STAC items: rules with stable ids and severities, returning ``Finding``s.

Validation never raises for a bad item and never prints; the service layer
(``geomesh.services.validation``) persists the findings and routing acts on them.

Import what you use from its module (``engine``: ``validate_document``, ``validate_file``;
``findings``: ``Finding`` and its helpers; ``registry``: ``RULES``, ``Policy``; ``rules``:
the checks and raster facts; ``schemas``: the offline schema store). This package module
imports none of them, so reading a finding never loads GDAL or the schema machinery.

    >>> from geomesh.validation.engine import validate_document
    >>> findings = validate_document(item_dict, config=config, schema_dir=store)
"""
