// Package client will be the Go client SDK: it learns the partition table
// from any node, sends each request to its partition's primary over one
// multiplexed connection per node, follows NotOwner redirects, retries with
// (clientID, seq) so that a retried mutation applies once, and offers the
// same Map interface as the embedded node (internal/api).
//
// Not built yet: this package holds no code until its issue is taken. It
// never imports grid, cluster, serf or raft.
package client
