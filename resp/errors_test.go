package resp

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/collocate/grid/internal/api"
)

// TestErrReply: a write is answered TRYAGAIN (which Redis clients retry by
// themselves) only for errors that guarantee nothing was applied; every
// error after which a write may have been applied is TIMEOUT. Reads may
// be retried after any refusal.
func TestErrReply(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("router: %w", err) }
	notOwner := &api.NotOwnerError{Partition: 3, Version: 7, Owner: "n2"}
	cases := []struct {
		err         error
		write, read string
	}{
		{wrap(api.ErrUnavailable), "TRYAGAIN ", "TRYAGAIN "},
		{wrap(api.ErrBusy), "TRYAGAIN ", "TRYAGAIN "},
		{wrap(api.ErrTimeout), "TIMEOUT ", "TIMEOUT "},
		{wrap(api.ErrReplication), "TIMEOUT ", "TIMEOUT "},
		{wrap(context.DeadlineExceeded), "TIMEOUT ", "TIMEOUT "},
		{wrap(context.Canceled), "TIMEOUT ", "TRYAGAIN "},
		{wrap(api.ErrClosed), "TIMEOUT ", "TRYAGAIN "},
		{wrap(api.ErrStaleEpoch), "TIMEOUT ", "TRYAGAIN "},
		{wrap(notOwner), "TIMEOUT ", "TRYAGAIN "},
		{&api.Error{Code: api.CodeUnavailable, Msg: "remote"}, "TRYAGAIN ", "TRYAGAIN "},
		{&api.Error{Code: api.CodeTimeout, Msg: "remote"}, "TIMEOUT ", "TIMEOUT "},
		{wrap(api.ErrValueTooLarge), "ERR string exceeds maximum allowed size (proto-max-bulk-len)", ""},
		{&api.Error{Code: api.CodeValueTooLarge, Msg: "remote"}, "ERR string exceeds maximum allowed size (proto-max-bulk-len)", ""},
		{wrap(api.ErrNotInteger), "ERR value is not an integer or out of range", ""},
		{wrap(api.ErrOverflow), "ERR increment or decrement would overflow", ""},
		{wrap(api.ErrInternal), "ERR ", "ERR "},
		// A function past its budget wraps its context's deadline, but
		// nothing was applied: the primary's final answer (FCALL).
		{fmt.Errorf("%w: partition 3: %w", api.ErrFunctionBudget, context.DeadlineExceeded), "ERR ", "ERR "},
		{&api.Error{Code: api.CodeFunctionPanic, Msg: "remote"}, "ERR ", "ERR "},
	}
	for _, tc := range cases {
		for _, w := range []bool{true, false} {
			want := tc.write
			if !w && tc.read != "" {
				want = tc.read
			}
			got := string(errReply(nil, tc.err, w))
			exact := !strings.HasSuffix(want, " ")
			if !strings.HasPrefix(got, "-"+want) || (exact && got != "-"+want+"\r\n") {
				t.Errorf("%v (write %v): %q, want %q", tc.err, w, got, want)
			}
		}
	}
}
