"""What the tests and the benchmarks share: fake mail providers on 127.0.0.1, real local servers,
throw-away projects. Not part of the `newsletter` package."""
