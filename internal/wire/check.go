package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// ErrMalformed reports msgpack data that cannot be a valid message.
var ErrMalformed = errors.New("wire: malformed msgpack")

// maxDepth bounds nesting in received messages; ours nest at most 5 deep.
const maxDepth = 32

// Check walks msgpack data without allocating and rejects it if a declared
// length exceeds the bytes that remain (each array element and map entry
// needs at least one byte), nesting is deeper than maxDepth, or the data
// has trailing or missing bytes. It exists because a decoder that trusts a
// length header allocates before reading: four bytes could ask for gigabytes.
func Check(data []byte) error {
	n, err := skip(data, 0)
	if err != nil {
		return err
	}
	if n != len(data) {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(data)-n)
	}
	return nil
}

func need(data []byte, at, n int) error {
	if n < 0 || at+n > len(data) || at+n < at {
		return fmt.Errorf("%w: length %d at offset %d exceeds %d bytes", ErrMalformed, n, at, len(data))
	}
	return nil
}

// skip returns the offset just past the value that starts at data[0].
func skip(data []byte, depth int) (int, error) {
	if depth > maxDepth {
		return 0, fmt.Errorf("%w: nesting deeper than %d", ErrMalformed, maxDepth)
	}
	if len(data) == 0 {
		return 0, fmt.Errorf("%w: unexpected end", ErrMalformed)
	}
	b := data[0]
	u8 := func() (int, error) {
		if err := need(data, 1, 1); err != nil {
			return 0, err
		}
		return int(data[1]), nil
	}
	u16 := func() (int, error) {
		if err := need(data, 1, 2); err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint16(data[1:])), nil
	}
	u32 := func() (int, error) {
		if err := need(data, 1, 4); err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint32(data[1:])), nil
	}
	blob := func(hdr int, n int, err error) (int, error) {
		if err != nil {
			return 0, err
		}
		if err := need(data, hdr, n); err != nil {
			return 0, err
		}
		return hdr + n, nil
	}
	elems := func(hdr, n, per int, err error) (int, error) {
		if err != nil {
			return 0, err
		}
		if err := need(data, hdr, n*per); err != nil {
			return 0, err
		}
		off := hdr
		for i := 0; i < n*per; i++ {
			m, err := skip(data[off:], depth+1)
			if err != nil {
				return 0, err
			}
			off += m
		}
		return off, nil
	}
	switch {
	case b <= msgpcode.PosFixedNumHigh, b >= msgpcode.NegFixedNumLow:
		return 1, nil
	case b >= msgpcode.FixedMapLow && b <= msgpcode.FixedMapHigh:
		return elems(1, int(b&0x0f), 2, nil)
	case b >= msgpcode.FixedArrayLow && b <= msgpcode.FixedArrayHigh:
		return elems(1, int(b&0x0f), 1, nil)
	case b >= msgpcode.FixedStrLow && b <= msgpcode.FixedStrHigh:
		return blob(1, int(b&0x1f), nil)
	}
	switch b {
	case msgpcode.Nil, msgpcode.False, msgpcode.True:
		return 1, nil
	case msgpcode.Uint8, msgpcode.Int8:
		return blob(1, 1, nil)
	case msgpcode.Uint16, msgpcode.Int16:
		return blob(1, 2, nil)
	case msgpcode.Uint32, msgpcode.Int32, msgpcode.Float:
		return blob(1, 4, nil)
	case msgpcode.Uint64, msgpcode.Int64, msgpcode.Double:
		return blob(1, 8, nil)
	case msgpcode.Str8, msgpcode.Bin8:
		n, err := u8()
		return blob(2, n, err)
	case msgpcode.Str16, msgpcode.Bin16:
		n, err := u16()
		return blob(3, n, err)
	case msgpcode.Str32, msgpcode.Bin32:
		n, err := u32()
		return blob(5, n, err)
	case msgpcode.Array16:
		n, err := u16()
		return elems(3, n, 1, err)
	case msgpcode.Array32:
		n, err := u32()
		return elems(5, n, 1, err)
	case msgpcode.Map16:
		n, err := u16()
		return elems(3, n, 2, err)
	case msgpcode.Map32:
		n, err := u32()
		return elems(5, n, 2, err)
	case msgpcode.FixExt1:
		return blob(2, 1, nil)
	case msgpcode.FixExt2:
		return blob(2, 2, nil)
	case msgpcode.FixExt4:
		return blob(2, 4, nil)
	case msgpcode.FixExt8:
		return blob(2, 8, nil)
	case msgpcode.FixExt16:
		return blob(2, 16, nil)
	case msgpcode.Ext8:
		n, err := u8()
		return blob(3, n, err)
	case msgpcode.Ext16:
		n, err := u16()
		return blob(4, n, err)
	case msgpcode.Ext32:
		n, err := u32()
		return blob(6, n, err)
	}
	return 0, fmt.Errorf("%w: unknown type byte 0x%02x", ErrMalformed, b)
}

// Decode checks data with Check and then decodes it into v. Use it for
// every byte that came from the network.
func Decode(data []byte, v any) error {
	if err := Check(data); err != nil {
		return err
	}
	return msgpack.Unmarshal(data, v)
}
