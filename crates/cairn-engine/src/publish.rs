//! Publishing a container as an image: its image configuration, and [`Container::publish`].
//!
//! A container carries the configuration of the image it came from ([`crate::ImageState`]:
//! environment, working directory, user, entrypoint, default arguments, labels, exposed ports)
//! and what the `with_*` calls below change. None of it is in any cache key: it changes what
//! the image says, not what its filesystem holds. Publishing solves the container, makes an
//! image of its snapshot chain in the store (base layers reused as they are, one new layer per
//! step that changed the filesystem) and pushes it.

use std::collections::{BTreeMap, BTreeSet};

use cairn_images::{ArchiveFormat, CommitOptions, ImageSpec, PushReport};
use cairn_oci::Digest;

use crate::ops::set_env;
use crate::{Container, EngineError};

/// Image configuration set on a container, over what its image says.
#[derive(Clone, Debug, Default)]
pub(crate) struct ImageSettings {
    entrypoint: Option<Vec<String>>,
    default_args: Option<Vec<String>>,
    labels: BTreeMap<String, String>,
    exposed_ports: BTreeSet<String>,
}

/// What a publish did: the image recorded in the store, and the push.
#[derive(Debug, Clone)]
pub struct Published {
    /// The image as the store recorded it.
    pub image: cairn_images::ImageRecord,
    /// What the push moved.
    pub push: PushReport,
}

impl Container {
    /// Sets the entrypoint of the published image. As in a Dockerfile, the default arguments
    /// the base image had are dropped (set new ones with [`Container::with_default_args`]).
    pub fn with_entrypoint<S: Into<String>>(&self, args: impl IntoIterator<Item = S>) -> Container {
        let mut c = self.clone();
        c.image.entrypoint = Some(args.into_iter().map(Into::into).collect());
        c
    }

    /// Sets the default arguments (`Cmd`) of the published image.
    pub fn with_default_args<S: Into<String>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> Container {
        let mut c = self.clone();
        c.image.default_args = Some(args.into_iter().map(Into::into).collect());
        c
    }

    /// Sets an OCI label of the published image.
    pub fn with_label(&self, key: impl Into<String>, value: impl Into<String>) -> Container {
        let mut c = self.clone();
        c.image.labels.insert(key.into(), value.into());
        c
    }

    /// Declares a port the published image exposes; `protocol` is `tcp` or `udp`.
    pub fn with_exposed_port(&self, port: u16, protocol: &str) -> Container {
        let mut c = self.clone();
        c.image
            .exposed_ports
            .insert(format!("{port}/{}", protocol.to_ascii_lowercase()));
        c
    }

    /// Solves the container and pushes it as the image `reference`; returns the manifest
    /// digest. gzip layers; mtimes clamped to `SOURCE_DATE_EPOCH` when it is set.
    pub async fn publish(&self, reference: &str) -> Result<Digest, EngineError> {
        let published = self
            .publish_with(reference, &CommitOptions::default())
            .await?;
        Ok(published.push.digest)
    }

    /// [`Container::publish`] with the layers' compression and timestamps chosen.
    pub async fn publish_with(
        &self,
        reference: &str,
        options: &CommitOptions,
    ) -> Result<Published, EngineError> {
        let image = self.commit_image(reference, options).await?;
        let push = self.engine.store().push(&image.reference, None).await?;
        Ok(Published { image, push })
    }

    /// Solves the container and records it as the image `reference` in the store, without
    /// pushing (`cairn push` can push it later).
    pub async fn commit_image(
        &self,
        reference: &str,
        options: &CommitOptions,
    ) -> Result<cairn_images::ImageRecord, EngineError> {
        let output = self.output().await?;
        let spec = self.image_spec(&output.state);
        let image = self
            .engine
            .store()
            .commit_image(reference, output.snapshot.as_deref(), &spec, options)
            .await?;
        Ok(image)
    }

    /// Solves the container and writes it to the host as an image archive: an OCI archive
    /// (a tar of an OCI layout, as Dagger's `export` writes), its image named
    /// `localhost/cairn-export:latest`. See [`Container::export_with`] for the other formats.
    pub async fn export(&self, path: impl AsRef<std::path::Path>) -> Result<Digest, EngineError> {
        self.export_with(
            path,
            "localhost/cairn-export:latest",
            ArchiveFormat::OciArchive,
            &CommitOptions::default(),
        )
        .await
    }

    /// Solves the container, records it in the store as the image `reference` and writes that
    /// image to `path` as `format` (an OCI layout directory, an OCI archive or a docker
    /// archive, which `podman load` and `cairn import` read). `path` appears complete or not
    /// at all. Returns the manifest digest.
    pub async fn export_with(
        &self,
        path: impl AsRef<std::path::Path>,
        reference: &str,
        format: ArchiveFormat,
        options: &CommitOptions,
    ) -> Result<Digest, EngineError> {
        let image = self.commit_image(reference, options).await?;
        self.engine
            .store()
            .export_archive(&image.reference, format, path.as_ref())
            .await?;
        Ok(image.digest)
    }

    /// The image configuration: the image's, then what this container set.
    fn image_spec(&self, state: &crate::ImageState) -> ImageSpec {
        let mut env = state.env.clone();
        for (k, v) in &self.spec.env {
            set_env(&mut env, k, v);
        }
        let settings = &self.image;
        let cmd = match (&settings.default_args, &settings.entrypoint) {
            (Some(args), _) => Some(args.clone()),
            (None, Some(_)) => None,
            (None, None) => state.cmd.clone(),
        };
        let mut labels = state.labels.clone();
        labels.extend(settings.labels.clone());
        let mut exposed_ports = state.exposed_ports.clone();
        exposed_ports.extend(settings.exposed_ports.iter().cloned());
        ImageSpec {
            env,
            workdir: self
                .spec
                .workdir
                .clone()
                .or_else(|| Some(state.workdir.clone()).filter(|w| !w.is_empty())),
            user: self
                .spec
                .user
                .clone()
                .or_else(|| Some(state.user.clone()).filter(|u| !u.is_empty())),
            entrypoint: settings
                .entrypoint
                .clone()
                .or_else(|| state.entrypoint.clone()),
            cmd,
            labels,
            exposed_ports,
            base_config: state.config.as_deref().and_then(|d| d.parse().ok()),
        }
    }
}
