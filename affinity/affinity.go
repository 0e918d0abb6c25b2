// Package affinity maps keys to partitions.
//
// The mapping is a compatibility promise: clients, embedded nodes and every
// gridnode must agree on it forever, so it never changes for a given
// partition count.
//
//  1. The affinity key of a string key is the content of its first hash tag:
//     the bytes between the first '{' and the first '}' after it, if that
//     content is non-empty (the Redis Cluster rule). Otherwise it is the whole
//     key. "user:{42}:cart" and "{42}" are collocated; "a{}b" hashes whole.
//  2. The partition id is xxhash64(affinity key) mod partitionCount.
//
// Typed keys that implement [Keyer] are stored as "{" + AffinityKey() + "}"
// followed by their encoded form, so rule 1 collocates them too.
//
// The package does no I/O, starts no goroutines and holds no state.
package affinity

import (
	"github.com/cespare/xxhash/v2"
)

// DefaultPartitionCount is the partition count of a cluster that does not set one.
// It is prime, which spreads sequential affinity keys evenly.
const DefaultPartitionCount = 271

// Keyer is implemented by typed keys that choose their own affinity key.
// Keys returning the same AffinityKey live in the same partition.
type Keyer interface {
	AffinityKey() string
}

// Tag returns the part of key that is hashed: the first non-empty hash tag,
// or the whole key.
func Tag(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] != '{' {
			continue
		}
		for j := i + 1; j < len(key); j++ {
			if key[j] == '}' {
				if j == i+1 {
					return key // "{}": empty tag, hash whole key
				}
				return key[i+1 : j]
			}
		}
		return key // '{' without '}'
	}
	return key
}

// Hash returns the 64-bit hash of key's affinity key.
func Hash(key string) uint64 {
	return xxhash.Sum64String(Tag(key))
}

// Partition returns the partition id of key in a cluster of partitions
// partitions. partitions must be positive; a non-positive count yields 0.
func Partition(key string, partitions int) int {
	if partitions <= 0 {
		return 0
	}
	return int(Hash(key) % uint64(partitions))
}

// TaggedKey returns the stored form of a typed key with affinity key ak and
// encoded form enc: "{ak}enc". An empty ak returns enc unchanged.
func TaggedKey(ak string, enc []byte) string {
	if ak == "" {
		return string(enc)
	}
	b := make([]byte, 0, len(ak)+2+len(enc))
	b = append(b, '{')
	b = append(b, ak...)
	b = append(b, '}')
	b = append(b, enc...)
	return string(b)
}

// ScanBits is the width of a key's scan position.
const ScanBits = 48

// ScanPosition returns key's position inside its partition for cursor scans:
// the top ScanBits bits of xxhash64 of the whole key. A key's position never
// changes, so a cursor made of (partition, position) stays valid while the
// map changes and the cluster rebalances.
func ScanPosition(key string) uint64 {
	return xxhash.Sum64String(key) >> (64 - ScanBits)
}
