"""On-disk formats of sparsekit tickets and their mask encodings (``formats/``)."""
