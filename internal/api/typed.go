package api

import (
	"context"
	"fmt"
	"iter"

	"github.com/collocate/grid/affinity"
	"github.com/vmihailenco/msgpack/v5"
)

// Codec turns values into bytes and back.
type Codec[T any] interface {
	Encode(v T) ([]byte, error)
	Decode(b []byte) (T, error)
}

// Msgpack is the default codec.
type Msgpack[T any] struct{}

// Encode encodes v as msgpack.
func (Msgpack[T]) Encode(v T) ([]byte, error) { return msgpack.Marshal(v) }

// Decode decodes msgpack into a T.
func (Msgpack[T]) Decode(b []byte) (T, error) {
	var v T
	err := msgpack.Unmarshal(b, &v)
	return v, err
}

// Typed is a typed view of a byte-level Map. Keys are stored as: the string
// itself for string keys; "{AffinityKey()}" followed by the msgpack encoding
// for keys implementing affinity.Keyer (so related keys share a partition);
// the msgpack encoding otherwise.
type Typed[K comparable, V any] struct {
	m     Map
	codec Codec[V]
	keys  Codec[K]
}

// NewTyped returns a typed view of m with msgpack values.
func NewTyped[K comparable, V any](m Map) *Typed[K, V] {
	return NewTypedCodec[K, V](m, Msgpack[V]{})
}

// NewTypedCodec returns a typed view of m with the given value codec.
func NewTypedCodec[K comparable, V any](m Map, codec Codec[V]) *Typed[K, V] {
	return &Typed[K, V]{m: m, codec: codec, keys: Msgpack[K]{}}
}

// Bytes returns the underlying byte-level map.
func (t *Typed[K, V]) Bytes() Map { return t.m }

// Key returns the stored form of k.
func (t *Typed[K, V]) Key(k K) (string, error) {
	switch kk := any(k).(type) {
	case string:
		return kk, nil
	case affinity.Keyer:
		enc, err := t.keys.Encode(k)
		if err != nil {
			return "", fmt.Errorf("%w: encode key: %v", ErrBadRequest, err)
		}
		return affinity.TaggedKey(kk.AffinityKey(), enc), nil
	}
	enc, err := t.keys.Encode(k)
	if err != nil {
		return "", fmt.Errorf("%w: encode key: %v", ErrBadRequest, err)
	}
	return string(enc), nil
}

// Get returns the value of k, or ErrNotFound.
func (t *Typed[K, V]) Get(ctx context.Context, k K) (V, error) {
	var zero V
	key, err := t.Key(k)
	if err != nil {
		return zero, err
	}
	b, err := t.m.Get(ctx, key)
	if err != nil {
		return zero, err
	}
	v, err := t.codec.Decode(b)
	if err != nil {
		return zero, fmt.Errorf("%w: decode value of %v: %v", ErrBadRequest, k, err)
	}
	return v, nil
}

// Put stores v under k.
func (t *Typed[K, V]) Put(ctx context.Context, k K, v V, opts ...Option) error {
	key, err := t.Key(k)
	if err != nil {
		return err
	}
	b, err := t.codec.Encode(v)
	if err != nil {
		return fmt.Errorf("%w: encode value: %v", ErrBadRequest, err)
	}
	return t.m.Put(ctx, key, b, opts...)
}

// PutIfAbsent stores v if k is absent; see Map.PutIfAbsent.
func (t *Typed[K, V]) PutIfAbsent(ctx context.Context, k K, v V, opts ...Option) (V, bool, error) {
	var zero V
	key, err := t.Key(k)
	if err != nil {
		return zero, false, err
	}
	b, err := t.codec.Encode(v)
	if err != nil {
		return zero, false, fmt.Errorf("%w: encode value: %v", ErrBadRequest, err)
	}
	old, stored, err := t.m.PutIfAbsent(ctx, key, b, opts...)
	if err != nil || stored {
		return zero, stored, err
	}
	ov, err := t.codec.Decode(old)
	return ov, false, err
}

// CompareAndSwap stores v if the current value encodes like expected.
func (t *Typed[K, V]) CompareAndSwap(ctx context.Context, k K, expected, v V, opts ...Option) (bool, error) {
	key, err := t.Key(k)
	if err != nil {
		return false, err
	}
	eb, err := t.codec.Encode(expected)
	if err != nil {
		return false, fmt.Errorf("%w: encode value: %v", ErrBadRequest, err)
	}
	b, err := t.codec.Encode(v)
	if err != nil {
		return false, fmt.Errorf("%w: encode value: %v", ErrBadRequest, err)
	}
	return t.m.CompareAndSwap(ctx, key, eb, b, opts...)
}

// Delete removes k; it reports whether k was present.
func (t *Typed[K, V]) Delete(ctx context.Context, k K) (bool, error) {
	key, err := t.Key(k)
	if err != nil {
		return false, err
	}
	return t.m.Delete(ctx, key)
}

// Scan yields every value with its stored key; see Map.Scan. Values that do
// not decode end the scan with an error in *errp.
func (t *Typed[K, V]) Scan(ctx context.Context, errp *error) iter.Seq2[string, V] {
	return func(yield func(string, V) bool) {
		for k, b := range t.m.Scan(ctx, errp) {
			v, err := t.codec.Decode(b)
			if err != nil {
				if errp != nil {
					*errp = fmt.Errorf("%w: decode value of %q: %v", ErrBadRequest, k, err)
				}
				return
			}
			if !yield(k, v) {
				return
			}
		}
	}
}
