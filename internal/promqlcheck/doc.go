// Package promqlcheck checks the PromQL that the documentation gives users
// to copy (docs/PRODUCTION.md, examples/metrics/wsprom/README.md): each
// query parses, and names only metrics, labels and label values that wsprom
// exports. It is a module of its own because the PromQL parser comes with
// the whole Prometheus server's requirements, which wsprom's users must not
// inherit.
package promqlcheck
