// Command nvidia-validate feeds slm-operator's rendered NVIDIA configs to NVIDIA's own Go parsers.
//
// It reads a JSON list of cases on stdin and prints a JSON list of results (one per case, same order):
//
//	{"kind": "mig-parted", "name": "...", "yaml": "<config.yaml>", "select": "<config name>", "pciDeviceIds": ["0x2330"]}
//	{"kind": "device-plugin", "name": "...", "yaml": "<config>", "env": {"MIG_STRATEGY": "mixed"}}
//
// mig-parted (github.com/NVIDIA/mig-parted, cmd/nvidia-mig-parted/assert/assert.go): the document is parsed by
// assert.ParseConfigFile and the named config selected by assert.GetSelectedMigConfig, exactly the path of
// `nvidia-mig-parted assert --valid-config -f FILE -c NAME` (the parsing and its rules are in
// api/spec/v1/spec.go: version, required fields, `devices: all|[idx]`, mig-devices only when mig-enabled,
// profile format via pkg/types/mig_config.go AssertValidFormat). On top, each entry's device-filter must match
// the GPU's PCI device id (api/spec/v1/helpers.go MatchesDeviceFilter): an entry that matches no GPU of the node
// is silently skipped by mig-parted, which would leave the node unpartitioned.
//
// device plugin (github.com/NVIDIA/k8s-device-plugin, api/config/v1/config.go NewConfig): the config is read
// as the plugin reads its --config-file, with the plugin's command-line defaults and environment (flag names,
// defaults and env vars as in cmd/nvidia-device-plugin/main.go), so an env var such as MIG_STRATEGY overrides
// the file exactly as it does in the real plugin; the unmarshalling rules are in api/config/v1/replicas.go
// (resources, replicas >= 2, devices) and sharing.go. Then the checks of validateFlags in
// cmd/nvidia-device-plugin/main.go (package main, so not importable) are applied in the same order with the
// same messages: MPS is refused with migStrategy mixed and without an MPS root, unknown MIG strategies and
// device-id/discovery strategies are refused.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	spec "github.com/NVIDIA/k8s-device-plugin/api/config/v1"
	"github.com/NVIDIA/mig-parted/cmd/nvidia-mig-parted/assert"
	"github.com/NVIDIA/mig-parted/pkg/types"
	"github.com/urfave/cli/v2"
)

type request struct {
	Kind         string            `json:"kind"`
	Name         string            `json:"name"`
	YAML         string            `json:"yaml"`
	Select       string            `json:"select"`
	PCIDeviceIDs []string          `json:"pciDeviceIds"`
	Env          map[string]string `json:"env"`
}

type result struct {
	Name  string `json:"name"`
	Error string `json:"error,omitempty"`
	// What NVIDIA's parser understood, for the Python side to compare with what the operator meant.
	Parsed any `json:"parsed,omitempty"`
}

func writeTemp(dir, text string) (string, error) {
	f, err := os.CreateTemp(dir, "config-*.yaml")
	if err != nil {
		return "", err
	}
	defer f.Close()
	_, err = f.WriteString(text)
	return f.Name(), err
}

func migParted(dir string, r request) (any, error) {
	path, err := writeTemp(dir, r.YAML)
	if err != nil {
		return nil, err
	}
	parsed, err := assert.ParseConfigFile(&assert.Flags{ConfigFile: path})
	if err != nil {
		return nil, fmt.Errorf("error parsing config file: %v", err)
	}
	selected, err := assert.GetSelectedMigConfig(&assert.Flags{ConfigFile: path, SelectedConfig: r.Select}, parsed)
	if err != nil {
		return nil, fmt.Errorf("error selecting MIG config: %v", err)
	}
	for _, pci := range r.PCIDeviceIDs {
		id, err := types.NewDeviceIDFromString(pci)
		if err != nil {
			return nil, fmt.Errorf("bad PCI device id %q given to the validator: %v", pci, err)
		}
		for i, entry := range selected {
			if !entry.MatchesDeviceFilter(id) {
				return nil, fmt.Errorf("entry %d of %q: device-filter %v does not match the GPU's device id %v", i, r.Select, entry.DeviceFilter, id)
			}
		}
	}
	return selected, nil
}

// The flags of cmd/nvidia-device-plugin/main.go that feed Config.Flags and validateFlags (same names, defaults
// and environment variables).
func pluginFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "mig-strategy", Value: spec.MigStrategyNone, EnvVars: []string{"MIG_STRATEGY"}},
		&cli.BoolFlag{Name: "fail-on-init-error", Value: true, EnvVars: []string{"FAIL_ON_INIT_ERROR"}},
		&cli.StringFlag{Name: "driver-root", Aliases: []string{"nvidia-driver-root"}, Value: "/", EnvVars: []string{"NVIDIA_DRIVER_ROOT"}},
		&cli.StringFlag{Name: "dev-root", Aliases: []string{"nvidia-dev-root"}, EnvVars: []string{"NVIDIA_DEV_ROOT"}},
		&cli.BoolFlag{Name: "pass-device-specs", EnvVars: []string{"PASS_DEVICE_SPECS"}},
		&cli.StringSliceFlag{Name: "device-list-strategy", Value: cli.NewStringSlice(string(spec.DeviceListStrategyEnvVar)), EnvVars: []string{"DEVICE_LIST_STRATEGY"}},
		&cli.StringFlag{Name: "device-id-strategy", Value: spec.DeviceIDStrategyUUID, EnvVars: []string{"DEVICE_ID_STRATEGY"}},
		&cli.StringFlag{Name: "mps-root", EnvVars: []string{"MPS_ROOT"}},
		&cli.StringFlag{Name: "device-discovery-strategy", Value: "auto", EnvVars: []string{"DEVICE_DISCOVERY_STRATEGY"}},
		&cli.StringFlag{Name: "config-file", EnvVars: []string{"CONFIG_FILE"}},
	}
}

// validateFlags of cmd/nvidia-device-plugin/main.go, less the NVML probe for CDI (the operator sets no CDI
// strategy).
func validateFlags(config *spec.Config) error {
	if _, err := spec.NewDeviceListStrategies(*config.Flags.Plugin.DeviceListStrategy); err != nil {
		return fmt.Errorf("invalid --device-list-strategy option: %v", err)
	}
	if *config.Flags.Plugin.DeviceIDStrategy != spec.DeviceIDStrategyUUID && *config.Flags.Plugin.DeviceIDStrategy != spec.DeviceIDStrategyIndex {
		return fmt.Errorf("invalid --device-id-strategy option: %v", *config.Flags.Plugin.DeviceIDStrategy)
	}
	if config.Sharing.SharingStrategy() == spec.SharingStrategyMPS {
		if *config.Flags.MigStrategy == spec.MigStrategyMixed {
			return fmt.Errorf("using --mig-strategy=mixed is not supported with MPS")
		}
		if config.Flags.MpsRoot == nil || *config.Flags.MpsRoot == "" {
			return fmt.Errorf("using MPS requires --mps-root to be specified")
		}
	}
	switch *config.Flags.DeviceDiscoveryStrategy {
	case "auto", "nvml", "tegra":
	default:
		return fmt.Errorf("invalid --device-discovery-strategy option %v", *config.Flags.DeviceDiscoveryStrategy)
	}
	switch *config.Flags.MigStrategy {
	case spec.MigStrategyNone, spec.MigStrategySingle, spec.MigStrategyMixed:
	default:
		return fmt.Errorf("unknown MIG strategy: %v", *config.Flags.MigStrategy)
	}
	if err := spec.AssertChannelIDsValid(config.Imex.ChannelIDs); err != nil {
		return fmt.Errorf("invalid IMEX channel IDs: %w", err)
	}
	return nil
}

func devicePlugin(dir string, r request) (any, error) {
	path, err := writeTemp(dir, r.YAML)
	if err != nil {
		return nil, err
	}
	// The environment the plugin's container gets (e.g. what the GPU Operator sets) overrides the file.
	for k, v := range r.Env {
		os.Setenv(k, v)
	}
	defer func() {
		for k := range r.Env {
			os.Unsetenv(k)
		}
	}()
	var config *spec.Config
	flags := pluginFlags()
	app := &cli.App{
		Name:  "nvidia-device-plugin",
		Flags: flags,
		Action: func(c *cli.Context) error {
			cfg, err := spec.NewConfig(c, flags)
			if err != nil {
				return fmt.Errorf("unable to finalize config: %v", err)
			}
			cfg.Flags.GFD = nil // as loadConfig in cmd/nvidia-device-plugin/main.go
			if err := validateFlags(cfg); err != nil {
				return fmt.Errorf("unable to validate flags: %v", err)
			}
			spec.DisableResourceNamingInConfig(cfg) // as main.go does before starting the plugins
			config = cfg
			return nil
		},
	}
	if err := app.Run([]string{"nvidia-device-plugin", "--config-file", path}); err != nil {
		return nil, err
	}
	return map[string]any{
		"migStrategy": *config.Flags.MigStrategy,
		"sharing":     string(config.Sharing.SharingStrategy()),
		"config":      config,
	}, nil
}

func main() {
	var reqs []request
	if err := json.NewDecoder(os.Stdin).Decode(&reqs); err != nil {
		fmt.Fprintf(os.Stderr, "reading the cases: %v\n", err)
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "nvidia-validate-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer os.RemoveAll(filepath.Clean(dir))
	out := make([]result, 0, len(reqs))
	for _, r := range reqs {
		var parsed any
		var err error
		switch r.Kind {
		case "mig-parted":
			parsed, err = migParted(dir, r)
		case "device-plugin":
			parsed, err = devicePlugin(dir, r)
		default:
			err = fmt.Errorf("unknown kind %q", r.Kind)
		}
		res := result{Name: r.Name, Parsed: parsed}
		if err != nil {
			res.Error = err.Error()
			res.Parsed = nil
		}
		out = append(out, res)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
