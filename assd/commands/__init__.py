"""The click commands of ``assd``, one module per pipeline stage; ``assd.cli`` registers them."""
