// Package promqlcheck checks what the production documentation tells
// operators to watch: its PromQL (docs/PRODUCTION.md,
// examples/metrics/wsprom/README.md) parses and names only metrics, labels
// and label values that wsprom exports, and its log records are messages
// the library logs, with the keys given. It is a module of its own because the PromQL parser comes with
// the whole Prometheus server's requirements, which wsprom's users must not
// inherit.
package promqlcheck
