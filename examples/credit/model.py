"""The credit pipeline's run_fn: a small Keras model over the transformed features."""

import tensorflow as tf
from preprocessing import NUMERIC


def run_fn(args):
    tf.keras.utils.set_random_seed(args.hyperparameters.get("seed", 0))
    numeric = {f"{n}_z": tf.keras.Input((), name=f"{n}_z") for n in NUMERIC}
    region = tf.keras.Input((), name="region_id", dtype="int64")
    bucket = tf.keras.Input((), name="area_bucket", dtype="int64")
    x = tf.keras.layers.Concatenate()(
        [tf.keras.layers.Reshape((1,))(v) for v in numeric.values()]
        + [tf.keras.layers.CategoryEncoding(4, output_mode="one_hot")(region),
           tf.keras.layers.CategoryEncoding(4, output_mode="one_hot")(bucket)])
    x = tf.keras.layers.Dense(args.hyperparameters.get("units", 16), activation="relu")(x)
    y = tf.keras.layers.Dense(1, activation="sigmoid")(x)
    inputs = {**numeric, "region_id": region, "area_bucket": bucket}
    model = tf.keras.Model(inputs, y)
    model.compile(tf.keras.optimizers.Adam(args.hyperparameters.get("learning_rate", 0.01)), "binary_crossentropy",
                  metrics=["accuracy"])
    model.fit({k: args.train[k] for k in inputs}, args.train_labels, epochs=args.hyperparameters.get("epochs", 30),
              batch_size=32, verbose=0)
    return model
