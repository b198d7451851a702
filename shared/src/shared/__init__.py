"""Digital Bridge's common library. Services share code only through this package."""
