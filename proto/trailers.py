"""The metadata keys of the wire contract: trailers the server writes and the client library reads, and one
request key the client sends."""

EXPECTED_SEQ = "fedrecon-expected-seq"  # on a refused push: the number the store expects next from this client
RETRY_AFTER_MS = "fedrecon-retry-after-ms"  # on a transient RESOURCE_EXHAUSTED: milliseconds before a retry
LAST_DIGEST = "fedrecon-last-digest"  # on a refused push: the digest of the client's last merged push
PULL_FROM = "fedrecon-pull-from"  # on a refused pull or watch: pull again from this version (0: everything)
MIN_VERSION = "fedrecon-min-version"  # on a Pull/Watch: a replica answers once it has applied this version
