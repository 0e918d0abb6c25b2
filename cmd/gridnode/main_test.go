package main

import (
	"io"
	"testing"
)

func TestParsePrecedence(t *testing.T) {
	env := map[string]string{"GRID_JOIN": "10.0.0.1:7946", "GRID_BACKUPS": "2", "GRID_NAME": "from-env"}
	cfg, _, err := parse([]string{"-name", "from-flag"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "from-flag" || cfg.Backups != 2 || len(cfg.Seeds) != 1 || cfg.Seeds[0] != "10.0.0.1:7946" {
		t.Fatalf("cfg %+v", cfg)
	}
}

func TestParseRejectsBadInput(t *testing.T) {
	none := func(string) string { return "" }
	for _, args := range [][]string{
		{"-partitions", "0"},
		{"-backups", "-1"},
		{"-rpc", "nonsense"},
		{"-profile", "fast"},
		{"-nosuchflag"},
		{"stray"},
		{"-log-level", "loud"},
	} {
		if _, _, err := parse(args, none, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	if _, _, err := parse(nil, func(k string) string {
		if k == "GRID_PARTITIONS" {
			return "many"
		}
		return ""
	}, io.Discard); err == nil {
		t.Error("bad GRID_PARTITIONS accepted")
	}
}

func TestRunExitsNonZeroOnBadFlags(t *testing.T) {
	if code := run([]string{"-backups", "x"}, io.Discard); code == 0 {
		t.Fatal("bad flag exited 0")
	}
}
