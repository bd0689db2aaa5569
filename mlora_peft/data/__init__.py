"""Multi-domain CTR data on the Hugging Face stack: loading, encoding, splits, fast batches, real data sets.

    from mlora_peft.data import load_multidomain
    data = load_multidomain("clicks.csv.gz", label="click", domain="country")
    data.splits            # DatasetDict: train / validation / test, with `label` and `domain_id`
    data.domain_names      # routing names, in domain_id order
    data.feature_spec      # SparseFeature / DenseFeature specs for building a backbone
    data.stats()           # rows, positives and CTR per split and domain
    print(data.feature_table_text())  # each feature's inferred kind, vocabulary size or mean/std
    loader = data.loader("train", batch_size=1024, composition="per_domain")
    data.save_encoder("mlora-adapter")   # JSON next to the adapters; MultiDomainEncoder.load(...) later

Real data sets: `load_movielens`, `load_amazon`, `load_taobao`, `load_ali_ccp`, `load_kuairand`,
`load_douban`, `load_aliexpress`; synthetic: `make_synthetic`, `stream_synthetic`, `synthetic_click_probability`.
"""

from .ali_ccp import load_ali_ccp
from .aliexpress import load_aliexpress
from .amazon import amazon_interactions, load_amazon, read_amazon, subsample_users
from .batching import DomainBatchSampler, RowBatch, TensorColumns, make_loader
from .douban import load_douban
from .encoders import CategoricalEncoder, DenseEncoder, DomainEncoder
from .kuairand import load_kuairand
from .labels import LabelRule
from .loading import EmptyDomainWarning, MultiDomainData, OneClassWarning, load_multidomain, raw_splits
from .movielens import load_movielens, read_movielens
from .negatives import sample_negatives, with_sampled_negatives
from .sources import read_source
from .splits import TimeSplit, stratified_parts, time_parts
from .streaming import StreamingBatches
from .synthetic import make_synthetic, stream_synthetic, synthetic_click_probability, synthetic_table
from .table_encoder import ENCODER_FILE, MultiDomainEncoder
from .taobao import load_taobao, taobao_interactions

__all__ = [
    "ENCODER_FILE",
    "CategoricalEncoder",
    "DenseEncoder",
    "DomainBatchSampler",
    "DomainEncoder",
    "EmptyDomainWarning",
    "LabelRule",
    "MultiDomainData",
    "MultiDomainEncoder",
    "OneClassWarning",
    "RowBatch",
    "StreamingBatches",
    "TensorColumns",
    "TimeSplit",
    "amazon_interactions",
    "subsample_users",
    "load_ali_ccp",
    "load_aliexpress",
    "load_amazon",
    "load_douban",
    "load_kuairand",
    "load_movielens",
    "load_multidomain",
    "raw_splits",
    "load_taobao",
    "make_loader",
    "make_synthetic",
    "read_amazon",
    "read_movielens",
    "read_source",
    "sample_negatives",
    "stratified_parts",
    "stream_synthetic",
    "synthetic_click_probability",
    "synthetic_table",
    "taobao_interactions",
    "time_parts",
    "with_sampled_negatives",
]
