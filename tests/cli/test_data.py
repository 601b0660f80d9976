from trl_diversity.data import load_prompts


def test_bundled_prompts_are_large_varied_and_disjoint():
    train, evaluation = load_prompts("train"), load_prompts("eval")
    assert len(train) >= 300 and len(evaluation) >= 100
    assert not set(train["prompt"]) & set(evaluation["prompt"])
    assert len(set(train["prompt"])) == len(train)
    forms = set(train["form"])
    assert {"story", "poem", "letter", "description", "dialogue", "explanation"} <= forms
    assert all(prompt.strip() for prompt in train["prompt"])


def test_standard_and_conversational_formats():
    standard = load_prompts("eval", limit=3)
    conversational = load_prompts("eval", conversational=True, limit=3)
    assert isinstance(standard[0]["prompt"], str)
    assert conversational[0]["prompt"] == [{"role": "user", "content": standard[0]["prompt"]}]
