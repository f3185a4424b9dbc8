"""$metadata: the CSDL XML document of the feed (OData v4.0), generated from model.py."""

from __future__ import annotations

from functools import cache
from xml.etree import ElementTree as ET

from services.api.odata.model import CONTAINER, ENTITY_SETS, NAMESPACE

EDMX = "http://docs.oasis-open.org/odata/ns/edmx"
EDM = "http://docs.oasis-open.org/odata/ns/edm"


@cache
def metadata_xml() -> bytes:
    """The CSDL XML of every entity set (valid against OASIS edmx.xsd / edm.xsd)."""
    ET.register_namespace("edmx", EDMX)
    ET.register_namespace("", EDM)
    root = ET.Element(f"{{{EDMX}}}Edmx", {"Version": "4.0"})
    services = ET.SubElement(root, f"{{{EDMX}}}DataServices")
    schema = ET.SubElement(services, f"{{{EDM}}}Schema", {"Namespace": NAMESPACE})
    for entity_set in ENTITY_SETS:
        entity = ET.SubElement(schema, f"{{{EDM}}}EntityType", {"Name": entity_set.type_name})
        key = ET.SubElement(entity, f"{{{EDM}}}Key")
        for name in entity_set.keys:
            ET.SubElement(key, f"{{{EDM}}}PropertyRef", {"Name": name})
        for prop in entity_set.properties:
            attrs = {"Name": prop.name, "Type": prop.edm, "Nullable": "true" if prop.nullable else "false"}
            if prop.edm == "Edm.DateTimeOffset":
                attrs["Precision"] = "6" if prop.storage == "tstz" else "3"
            ET.SubElement(entity, f"{{{EDM}}}Property", attrs)
    container = ET.SubElement(schema, f"{{{EDM}}}EntityContainer", {"Name": CONTAINER})
    for entity_set in ENTITY_SETS:
        ET.SubElement(
            container,
            f"{{{EDM}}}EntitySet",
            {"Name": entity_set.name, "EntityType": f"{NAMESPACE}.{entity_set.type_name}"},
        )
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document
