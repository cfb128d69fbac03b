"""Generated Python stubs of the fedrecon.v1 wire contract (proto/fedrecon/v1/*.proto); `make stubs` rewrites them."""
