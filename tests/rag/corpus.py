"""A small corpus made by the tests: one document per format, each about a different subject."""

from __future__ import annotations

import zlib

KAFKA_MD = """# Kafka sensors

Kafka sensors read the agentflow topics with a cursor that stores the next offset of every partition.
The cursor is the source of truth for progress, so no event is lost and none runs twice.

## Dead letters

An event that cannot be parsed goes to the dead-letter topic with the reason it was rejected.
A bad event never stalls its partition; the sensor moves on to the next offset.
"""

VOLCANO_TXT = """Volcanoes form where magma from the mantle reaches the surface of the crust.
Basaltic lava is runny and builds broad shield volcanoes such as Mauna Loa in Hawaii.

Explosive eruptions happen when gas-rich, viscous magma fragments into ash and pumice.
Pyroclastic flows of hot gas and rock race down the slopes faster than a car.
"""

BAKING_HTML = """<html><head><title>Sourdough baking</title><style>p {color: red}</style></head>
<body><script>var tracking = 1;</script>
<h1>Sourdough bread</h1>
<p>A sourdough starter is a culture of wild yeast and lactic acid bacteria fed with flour and water.</p>
<p>Bakers knead the dough, let it rise overnight in the fridge, and bake it in a hot Dutch oven.</p>
</body></html>
"""

TELESCOPE_PDF_TEXT = (
    "Radio telescopes observe pulsars, rapidly rotating neutron stars that emit beams of radiation."
)


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer is `text` (Helvetica, compressed content stream)."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = zlib.compress(f"BT /F1 10 Tf 40 720 Td ({escaped}) Tj ET".encode())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def corpus() -> dict[str, bytes]:
    """File name -> bytes."""
    return {
        "kafka.md": KAFKA_MD.encode(),
        "volcano.txt": VOLCANO_TXT.encode(),
        "baking.html": BAKING_HTML.encode(),
        "telescope.pdf": tiny_pdf(TELESCOPE_PDF_TEXT),
    }
