"""params.yaml validation: malformed files are refused with the bad key named."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from pydantic import BaseModel

from egolens.config import Params, ParamsError, load_params, validate_params
from tests.conftest import ROOT, default_params


def test_the_default_params_file_is_valid_and_matches_the_reference():
    params = load_params(ROOT / "params.yaml")
    assert params.env.features == ["presence", "x", "y", "vx", "vy", "cos_h", "sin_h"]
    assert params.env.target_speeds == [0, 4.5, 9]
    assert (params.agent.heads, params.agent.feature_size, params.agent.embedding_layers) == (2, 64, [64, 64])
    # the ladder's dg-2hz: the swept recipe's time scales kept in seconds at 2 Hz decisions
    assert params.env.policy_frequency == 2 and params.agent.n_steps == 3
    assert params.agent.gamma ** params.env.policy_frequency == pytest.approx(0.9, abs=1e-5)
    assert params.agent.target_update == 50 * params.env.policy_frequency
    assert params.agent.epsilon.tau == 5000 * params.env.policy_frequency
    assert params.agent.memory_capacity == 15000 * params.env.policy_frequency
    assert len(params.seeds) >= 5 and params.evaluate.episodes == 100


def edit(path: str, value=None, delete: bool = False) -> dict:
    params = copy.deepcopy(default_params())
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    if delete:
        del node[last]
    else:
        node[last] = value
    return params


MALFORMED = [
    # (what is wrong, the params, text the message must contain)
    ("zero episodes", edit("train.episodes", 0), "train.episodes = 0"),
    ("negative episodes", edit("evaluate.episodes", -5), "evaluate.episodes = -5"),
    ("gamma above 1", edit("agent.gamma", 1.5), "agent.gamma = 1.5"),
    ("gamma zero", edit("agent.gamma", 0.0), "agent.gamma = 0.0"),
    ("heads not dividing feature_size", edit("agent.heads", 3), "agent.heads = 3 must divide agent.feature_size"),
    ("unknown feature", edit("env.features", ["presence", "x", "speed"]), "env.features.2 = 'speed'"),
    ("presence not first", edit("env.features", ["x", "presence"]), "env.features"),
    ("unknown top-level key", edit("trian", {"episodes": 3}), "trian: unknown key"),
    ("misspelt nested key", edit("train.epsiodes", 3), "train.epsiodes: unknown key"),
    ("string for a number", edit("agent.lr", "5e-4"), "agent.lr = '5e-4'"),
    ("float for an int", edit("agent.batch_size", 64.5), "agent.batch_size = 64.5"),
    ("string for a bool", edit("env.absolute", "yes"), "env.absolute = 'yes'"),
    ("unknown env id", edit("env.id", "intersection-v1"), "env.id = 'intersection-v1'"),
    ("repeated seeds", edit("seeds", [0, 0]), "seeds = [0, 0]"),
    ("epsilon above 1", edit("agent.epsilon.start", 2.0), "agent.epsilon.start = 2.0"),
    ("inverted features range", edit("env.features_range.x", [100, -100]), "env.features_range.x"),
    ("held-out seeds overlap training", edit("evaluate.env_seed", 5), "evaluate.env_seed = 5 overlaps"),
    ("spawn probability above 1", edit("env.spawn_probability", 1.2), "env.spawn_probability = 1.2"),
    ("too many envs", edit("train.num_envs", 0), "train.num_envs = 0"),
]


@pytest.mark.parametrize("what, params, needle", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_params_are_refused_naming_the_key(what, params, needle):
    with pytest.raises(ParamsError) as err:
        validate_params(params)
    assert needle in str(err.value)


def test_unknown_key_message_lists_the_allowed_keys():
    with pytest.raises(ParamsError, match="allowed keys here: episodes, num_envs, checkpoint_every"):
        validate_params(edit("train.epsiodes", 3))


def test_a_non_mapping_or_missing_file_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="mapping"):
        validate_params([1, 2])
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "broken.yaml")


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_stages_refuse_bad_params_before_any_work(tmp_path, stage):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(edit("agent.heads", 3)))
    run = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--seed", "0", "--params", str(bad)],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert run.returncode == 2
    assert "agent.heads = 3 must divide agent.feature_size" in run.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists()


def test_path_grid_max_below_path_grid_is_refused_naming_both_keys():
    with pytest.raises(ParamsError, match=r"attributions.path_grid_max = 32 must be >= attributions.path_grid = 512"):
        validate_params(edit("attributions.path_grid_max", 32))
    assert validate_params(edit("attributions.path_grid_max", 512)).attributions.path_grid_max == 512


PROBES = [
    # configs that once validated and then crashed or lied after training (each must be refused at load)
    ("one output layer", edit("agent.output_layers", [64]), "agent.output_layers"),
    ("one embedding layer", edit("agent.embedding_layers", [64]), "agent.embedding_layers"),
    ("three embedding layers", edit("agent.embedding_layers", [32, 32, 64]), "two layers each"),
    ("features without x, y", edit("env.features", ["presence", "vx", "vy", "cos_h", "sin_h"]), "missing ['x', 'y']"),
    ("infinite lr", edit("agent.lr", float("inf")), "agent.lr = inf"),
    ("NaN lr", edit("agent.lr", float("nan")), "agent.lr = nan"),
    ("infinite grad clip", edit("agent.grad_clip", float("inf")), "agent.grad_clip = inf"),
    ("infinite weight decay", edit("agent.weight_decay", float("inf")), "agent.weight_decay = inf"),
    ("epsilon rising", edit("agent.epsilon", {"start": 0.1, "final": 0.5, "tau": 100.0}),
     "agent.epsilon.final = 0.5 must be <= agent.epsilon.start = 0.1"),
    ("NaN target speed", edit("env.target_speeds", [0.0, float("nan"), 9.0]), "env.target_speeds.1 = nan"),
    ("NaN collision reward", edit("env.collision_reward", float("nan")), "env.collision_reward = nan"),
    ("infinite arrived reward", edit("env.arrived_reward", float("inf")), "env.arrived_reward = inf"),
    ("reversed reward speed range", edit("env.reward_speed_range", [9.0, 7.0]), "env.reward_speed_range"),
    ("decreasing target speeds", edit("env.target_speeds", [9.0, 4.5, 0.0]), "three increasing speeds"),
    ("lr as YAML's string", edit("agent.lr", "1e-3"), "write 1.0e-3 or 0.001"),
    ("seeds not a list", edit("seeds", 0), "seeds = 0"),
    ("unknown loss", edit("agent.loss", "huber"), "agent.loss = 'huber'"),
    ("zero n-step", edit("agent.n_steps", 0), "agent.n_steps = 0"),
    ("unknown replan rule", edit("reference.replan", "sometimes"), "reference.replan = 'sometimes'"),
    ("negative ttc threshold", edit("reference.ttc_threshold", -1.0), "reference.ttc_threshold = -1.0"),
    ("unknown reference key", edit("reference.planner", 2), "reference.planner: unknown key"),
    ("infinite scene horizon", edit("scene.horizon", float("inf")), "scene.horizon = inf"),
    ("demonstrations on training seeds", edit("demonstrations.env_seed", 4_000_000),
     "demonstrations.env_seed = 4000000 overlaps the training env seeds"),
    ("demonstrations running into evaluate's seeds", edit("demonstrations.env_seed", 899_999_990),
     "overlaps the evaluate stage's held-out env seeds [900000000, 900000100)"),
    ("demonstrations on rollout's seeds", edit("demonstrations.env_seed", 950_000_010),
     "overlaps the rollout stage's held-out env seeds"),
    ("demonstrations on interventions' seeds", edit("demonstrations.env_seed", 969_999_999),
     "overlaps the interventions stage's held-out env seeds"),
    ("no demonstrations", edit("demonstrations.episodes", 0), "demonstrations.episodes = 0"),
    ("zero imitation epochs", edit("imitation.epochs", 0), "imitation.epochs = 0"),
    ("imitation lr as YAML's string", edit("imitation.lr", "1e-3"), "imitation.lr = '1e-3'"),
]


@pytest.mark.parametrize("what, params, needle", PROBES, ids=[p[0] for p in PROBES])
def test_configs_that_would_crash_or_lie_after_training_are_refused_at_load(what, params, needle):
    with pytest.raises(ParamsError) as err:
        validate_params(params)
    assert needle in str(err.value)


def test_params_yaml_sets_every_key_so_no_default_of_the_code_reaches_a_stage():
    """egolens/config.py is no stage's DVC dep (tests/test_dvc_deps.py): that is sound only while
    every value a stage reads comes from params.yaml, which DVC tracks."""
    def missing(model, raw, prefix=""):
        out = []
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            if name not in raw:
                out.append(key)
            elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                out += missing(field.annotation, raw[name], key + ".")
        return out

    assert missing(Params, default_params()) == []


@pytest.mark.parametrize("key, value, needle", [
    ("env_seed", 5, "interventions.env_seed = 5 overlaps"),
    ("top_k", 40, "interventions.top_k = 40 leaves too few units"),
    ("perturbation_sizes", [0.1, 0.0], "non-zero"),
    ("closed_loop_episodes", 0, "interventions.closed_loop_episodes = 0"),
    ("closed_loop_episodes", 1, "interventions.closed_loop_episodes = 1.*greater than or equal to 2"),
    ("equivalence_margin", 0.0, "interventions.equivalence_margin = 0.0.*greater than 0"),
    ("equivalence_margin", 1.5, "interventions.equivalence_margin = 1.5.*less than 1"),
])
def test_interventions_params_are_validated(key, value, needle):
    params = default_params()
    assert validate_params(params).interventions.env_seed == 970_000_000
    params["interventions"][key] = value
    with pytest.raises(ParamsError, match=needle):
        validate_params(params)


NINE_FEATURES = ["presence", "x", "y", "vx", "vy", "cos_h", "sin_h", "cos_d", "sin_d"]


def test_observe_intentions_without_the_destination_features_is_refused_naming_both_keys():
    with pytest.raises(ParamsError) as err:
        validate_params(edit("env.observe_intentions", True))
    assert "env.observe_intentions" in str(err.value) and "env.features" in str(err.value)
    assert "cos_d" in str(err.value) and "sin_d" in str(err.value)


def test_destination_features_without_observe_intentions_are_refused():
    with pytest.raises(ParamsError, match="env.observe_intentions"):
        validate_params(edit("env.features", NINE_FEATURES))


def test_observed_intentions_on_intersection_v2_are_accepted():
    params = edit("env.features", NINE_FEATURES)
    params["env"].update(observe_intentions=True, id="intersection-v2")
    env = validate_params(params).env
    assert (env.id, env.observe_intentions, len(env.features)) == ("intersection-v2", True, 9)


def test_an_unknown_env_id_names_the_allowed_ids():
    with pytest.raises(ParamsError, match="intersection-v2"):
        validate_params(edit("env.id", "intersection-v1"))


@pytest.mark.parametrize("key, value, needle", [
    ("routes", ["o0-o3"], "route 'o0-o3'"),
    ("routes", ["o1-o1"], "route 'o1-o1'"),
    ("routes", ["west"], "route 'west'"),
    ("gap_stop", -5.0, "scenes.gap_start = -4.0 must be < scenes.gap_stop = -5.0"),
    ("gap_step", 0.01, "scenes.gap_step = 0.01 gives 1001 gaps"),
    ("other_speed", 12.0, "scenes.other_speed = 12.0"),
    ("ego_longitudinal", 120.0, "scenes.ego_longitudinal = 120.0"),
    ("visible", [False, False], "visible must not repeat"),
    ("visible", [True], "scenes.visible = \\[True\\] asks for scenes whose route is observed"),
])
def test_scenes_params_are_validated_naming_the_key(key, value, needle):
    params = default_params()
    assert validate_params(params).scenes.gaps[0] == params["scenes"]["gap_start"]
    params["scenes"][key] = value
    with pytest.raises(ParamsError, match=needle):
        validate_params(params)


def test_the_scene_gap_grid_includes_both_ends_on_exact_values():
    params = default_params()
    params["scenes"].update(gap_start=-0.3, gap_stop=0.6, gap_step=0.3)
    assert validate_params(params).scenes.gaps == [-0.3, 0.0, 0.3, 0.6]


@pytest.mark.parametrize("key, value, needle", [
    ("probes.targets", ["distance", "intent"], r"probes.targets: unknown \['intent'\]; allowed: \['distance'"),
    ("probes.sites", ["others_embedding.hook_post.1", "attention_layer.hook_nope"],
     "probes.sites: no probe site named 'attention_layer.hook_nope'"),
    ("probes.sites", ["others_embedding.hook_post.1", "output_layer.hook_post.2"],
     "probes.sites: output_layer.hook_post.2 is not recorded: output_layer has 2 hidden layers"),
    ("probes.sites", ["output_layer.hook_post.0"], r"probes.targets \['distance'.* have no site"),
    ("probes.logistic_c", [0.0, 1.0], "probes.logistic_c.*positive"),
    ("steering.alphas", [-1.0, 1.0], r"steering.alphas = \[-1.0, 1.0\]: the grid must contain 0"),
    ("steering.alphas", [0.0, 1.0, 1.0], "steering.alphas.*repeated"),
    ("steering.sites", ["attention_layer.hook_k"], r"steering.sites: \['attention_layer.hook_k'\] cannot be steered"),
    ("steering.sites", ["output_layer.hook_post.1", "ego_embedding.hook_post.0"],
     r"steering.sites \['ego_embedding.hook_post.0'\] are not in probes.sites"),
    ("steering.safety_targets", ["turn"], "steering.safety_targets: .*'turn'.* are categorical"),
    ("steering.safety_targets", ["crossing_threat"],
     "steering.sites: others_embedding.hook_post.1 has no probed safety target with one row per vehicle"),
    ("steering.random_directions", 2, "steering.random_directions"),
    ("steering.episodes", 51, "steering.episodes = 51 must be <= interventions.closed_loop_episodes = 50"),
])
def test_probe_and_steering_params_are_validated(key, value, needle):
    with pytest.raises(ParamsError, match=needle):
        validate_params(edit(key, value))
