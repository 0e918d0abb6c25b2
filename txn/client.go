package txn

import (
	"context"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/internal/api"
)

// Client runs transactions through a client SDK connection.
func Client(c *client.Client) Grid { return clientGrid{c} }

type clientGrid struct{ c *client.Client }

func (g clientGrid) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	return g.c.ExecuteOnPartition(ctx, part, name, args)
}

func (g clientGrid) Read(ctx context.Context, m, key string) (api.Entry, error) {
	return g.c.Map(m).GetEntry(ctx, key)
}

func (g clientGrid) Partitions() int { return g.c.Partitions() }

func (g clientGrid) ReadAll(ctx context.Context, m string, keys []string) (map[string]api.Entry, error) {
	return g.c.Map(m).GetEntries(ctx, keys)
}
