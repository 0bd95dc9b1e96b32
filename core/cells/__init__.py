"""White cells: finding them in a field at a physical scale (finder), cutting them out, and
storing them as records (records)."""
