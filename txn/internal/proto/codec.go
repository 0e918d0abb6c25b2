package proto

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Hand-written msgpack for what every step carries (Read, Write, Header):
// the same arrays the struct tags describe, without reflection (a third of
// a transfer's encoding and decoding time).

var (
	_ msgpack.CustomEncoder = Read{}
	_ msgpack.CustomDecoder = (*Read)(nil)
	_ msgpack.CustomEncoder = Write{}
	_ msgpack.CustomDecoder = (*Write)(nil)
	_ msgpack.CustomEncoder = Header{}
	_ msgpack.CustomDecoder = (*Header)(nil)
)

func arrayLen(dec *msgpack.Decoder, want int, what string) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n != want {
		return fmt.Errorf("txn: %s of %d fields, want %d", what, n, want)
	}
	return nil
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r Read) EncodeMsgpack(enc *msgpack.Encoder) error {
	if err := enc.EncodeArrayLen(3); err != nil {
		return err
	}
	if err := enc.EncodeString(r.Map); err != nil {
		return err
	}
	if err := enc.EncodeString(r.Key); err != nil {
		return err
	}
	return enc.EncodeUint(r.Version)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *Read) DecodeMsgpack(dec *msgpack.Decoder) (err error) {
	if err = arrayLen(dec, 3, "read"); err != nil {
		return err
	}
	if r.Map, err = dec.DecodeString(); err != nil {
		return err
	}
	if r.Key, err = dec.DecodeString(); err != nil {
		return err
	}
	r.Version, err = dec.DecodeUint64()
	return err
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (w Write) EncodeMsgpack(enc *msgpack.Encoder) error {
	if err := enc.EncodeArrayLen(10); err != nil {
		return err
	}
	for _, f := range []func() error{
		func() error { return enc.EncodeString(w.Map) },
		func() error { return enc.EncodeString(w.Key) },
		func() error { return enc.EncodeBytes(w.Value) },
		func() error { return enc.EncodeBool(w.Delete) },
		func() error { return enc.EncodeBool(w.Add) },
		func() error { return enc.EncodeInt(w.Delta) },
		func() error { return enc.EncodeBool(w.HasMin) },
		func() error { return enc.EncodeInt(w.Min) },
		func() error { return enc.EncodeInt(w.TTL) },
		func() error { return enc.EncodeBool(w.KeepTTL) },
	} {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (w *Write) DecodeMsgpack(dec *msgpack.Decoder) (err error) {
	if err = arrayLen(dec, 10, "write"); err != nil {
		return err
	}
	if w.Map, err = dec.DecodeString(); err != nil {
		return err
	}
	if w.Key, err = dec.DecodeString(); err != nil {
		return err
	}
	if w.Value, err = dec.DecodeBytes(); err != nil {
		return err
	}
	if w.Delete, err = dec.DecodeBool(); err != nil {
		return err
	}
	if w.Add, err = dec.DecodeBool(); err != nil {
		return err
	}
	if w.Delta, err = dec.DecodeInt64(); err != nil {
		return err
	}
	if w.HasMin, err = dec.DecodeBool(); err != nil {
		return err
	}
	if w.Min, err = dec.DecodeInt64(); err != nil {
		return err
	}
	if w.TTL, err = dec.DecodeInt64(); err != nil {
		return err
	}
	w.KeepTTL, err = dec.DecodeBool()
	return err
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (h Header) EncodeMsgpack(enc *msgpack.Encoder) error {
	if err := enc.EncodeArrayLen(4); err != nil {
		return err
	}
	if err := enc.EncodeString(h.ID); err != nil {
		return err
	}
	if err := enc.EncodeInt(int64(h.Coord)); err != nil {
		return err
	}
	if err := enc.EncodeInt(h.Deadline); err != nil {
		return err
	}
	return enc.EncodeInt(h.Prio)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (h *Header) DecodeMsgpack(dec *msgpack.Decoder) (err error) {
	if err = arrayLen(dec, 4, "header"); err != nil {
		return err
	}
	if h.ID, err = dec.DecodeString(); err != nil {
		return err
	}
	if h.Coord, err = dec.DecodeInt(); err != nil {
		return err
	}
	if h.Deadline, err = dec.DecodeInt64(); err != nil {
		return err
	}
	h.Prio, err = dec.DecodeInt64()
	return err
}
