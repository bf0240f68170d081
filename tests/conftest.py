import pytest

from longattn_cli.testing import tiny_reference, train_bpe_tokenizer, train_wordpiece_tokenizer


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bpe")
    train_bpe_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wordpiece")
    train_wordpiece_tokenizer(d)
    return d


@pytest.fixture
def one_thread():
    """Tiny models train ~50x faster on one thread when other processes share the cores (no OpenMP spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory, bpe_dir):
    """A tiny random RobertaForMaskedLM checkpoint with the BPE tokenizer (read-only for tests)."""
    d = tmp_path_factory.mktemp("roberta")
    tiny_reference("roberta", d, tokenizer_dir=bpe_dir)
    return d


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, wordpiece_dir):
    """A tiny random BertForMaskedLM checkpoint with the WordPiece tokenizer (read-only for tests)."""
    d = tmp_path_factory.mktemp("bert")
    tiny_reference("bert", d, tokenizer_dir=wordpiece_dir)
    return d
