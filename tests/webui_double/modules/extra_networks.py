"""modules/extra_networks.py (v1.10.1): `<name:arg:arg...>` tags taken out of prompts, and each
registered handler activated per batch with ExtraNetworkParams (positional and key=value args);
handlers not mentioned are activated with no arguments (that is how a LoRA gets switched off)."""
import re
from collections import defaultdict

extra_network_registry = {}
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split('=', 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def activate(p, extra_network_data):
    for name, params_list in extra_network_data.items():
        if name in extra_network_registry:
            extra_network_registry[name].activate(p, params_list)
    for name, extra_network in extra_network_registry.items():
        if name not in extra_network_data:
            extra_network.activate(p, [])


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts):
    res, extra_data = [], None
    for prompt in prompts:
        updated_prompt, parsed_extra_data = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed_extra_data
        res.append(updated_prompt)
    return res, extra_data
